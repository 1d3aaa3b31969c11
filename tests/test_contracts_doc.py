"""docs/contracts.md is exact where code can check it: the column lists it documents are the
ones the code writes, in the same order, so the document cannot drift silently."""

from __future__ import annotations

import re
from pathlib import Path

from agegender.data.cache import INDEX_COLUMNS
from agegender.inference import COLUMNS, PROB_COLUMNS
from agegender.labels import AGE_BUCKETS, GENDERS

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "contracts.md").read_text()


def _section(heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert match, f"docs/contracts.md has no section '## {heading}'"
    return match.group(1)


def _first_table(text: str, header: str) -> list[tuple[str, str]]:
    """(name, value) rows of the first table whose header row starts with ``| header |``."""
    lines = text.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"| {header} |")))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        name, value = (cell.strip() for cell in line.strip("|").split("|", 1))
        rows.append((name.strip("`"), value))
    return rows


def test_prediction_columns_are_the_writers() -> None:
    section = _section("predictions.csv")
    rows = _first_table(section, "column")
    assert [name for name, _ in rows] == [*COLUMNS, *PROB_COLUMNS]
    # the header lines shown, without and with save_probs=true
    assert ",".join(COLUMNS) in section.splitlines()
    assert ",".join(COLUMNS + PROB_COLUMNS) in section.splitlines()
    # each probability column names its class, in logit order
    values = dict(rows)
    for i, bucket in enumerate(AGE_BUCKETS):
        assert f"`{bucket}`" in values[f"p_age_{i}"], f"p_age_{i}"
    for i, gender in enumerate(GENDERS):
        assert f"`{gender}`" in values[f"p_gender_{i}"], f"p_gender_{i}"


def test_track_columns_are_the_writers() -> None:
    from agegender.inference.tracking import TRACK_COLUMNS

    section = _section("tracks.csv")
    rows = _first_table(section, "column")
    assert [name for name, _ in rows] == list(TRACK_COLUMNS)
    assert ",".join(TRACK_COLUMNS) in section.splitlines()


def test_cache_index_columns_are_the_writers() -> None:
    rows = _first_table(_section("Face cache"), "column")
    assert [name for name, _ in rows] == INDEX_COLUMNS


def test_readme_links_the_contracts() -> None:
    assert "(docs/contracts.md)" in (REPO / "README.md").read_text()


def test_jsonl_keys_and_export_metadata_are_documented() -> None:
    import numpy as np

    from agegender.api import FaceResult
    from agegender.export import export_metadata
    from agegender.models import build_model
    from agegender.models.exportable import ExportableNet

    keys = [name for name, _ in _first_table(_section("predictions.jsonl"), "key")]
    documented = {k.strip("` ") for cell in keys for k in cell.split(",")}
    face = FaceResult(box=(0, 0, 1, 1), score=1.0, landmarks=[(0.0, 0.0)] * 5)
    assert documented == {"path", "face", "status", *face.to_dict()}
    net = ExportableNet(build_model("levi_hassner", caffe_init=False))
    record = {"temperature": {"age": 1.5}, "fitted_on": "x", "faces": {"age": 3}}
    meta = export_metadata(net, "adience8", "x", record)  # a calibrated export: every key
    assert "calibration" not in export_metadata(net, "adience8", "x")
    rows = [n for n, _ in _first_table(_section("Exported models (ONNX, TorchScript)"), "key")]
    assert {k.strip("` ") for cell in rows for k in cell.split(",")} == set(meta)
    assert np.isfinite(float(meta["crop_size"]))
