"""precision: unknown values refused, ``auto`` from the install step's measurement, int8 only
when asked for, and the int8 graph end to end with its agreement."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"


def _record(folder: tuple[str, str], single: tuple[str, str], **changes: object) -> dict:
    from agegender.runtime.measured import RECORD_FORMAT, machine

    def entry(path: tuple[str, str], rate: float, start: float) -> dict:
        return {"backend": path[0], "precision": path[1], "faces_per_s": rate, "start_s": start}

    record = {
        "format": RECORD_FORMAT,
        "measured": "2026-12-05 00:00 UTC",
        "machine": machine(),
        "candidates": [entry(folder, 200.0, 3.0), entry(single, 120.0, 0.4)],
        "choices": {
            "folder": {"backend": folder[0], "precision": folder[1]},
            "single": {"backend": single[0], "precision": single[1]},
        },
    }
    record.update(changes)
    return record


@pytest.fixture
def cache(monkeypatch, tmp_path: Path) -> Path:  # noqa: ANN001
    """An empty cache holding a stand-in fp32 export (its presence is all ``auto`` checks)."""
    from agegender.store import AUTO_RECORD_ENV, CACHE_ENV, original_onnx_path

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(AUTO_RECORD_ENV)  # conftest's "none": here the record is tested
    original_onnx_path().write_bytes(b"stand-in")
    return tmp_path


def test_an_unknown_precision_is_an_error_naming_the_choices() -> None:
    from agegender.inference.options import OptionError, PredictOptions
    from agegender.runtime.build import choose_backend

    for bad in ("banana", "fp16", "INT8"):
        with pytest.raises(OptionError, match="auto, fp32, bf16, int8"):
            PredictOptions.defaults(precision=bad)
        with pytest.raises(ValueError, match="auto, fp32, bf16, int8"):
            choose_backend("auto", precision=bad)
    run = subprocess.run(
        [sys.executable, "predict.py", f"input={SAMPLES}", "output=/nonexistent/never",
         "precision=banana"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert "precision must be one of auto, fp32, bf16, int8, got 'banana'" in run.stderr


def test_settings_that_cannot_run_together_stop_predict_py_cleanly(tmp_path: Path) -> None:
    """A clear one-line error, exit code 2, and no output folder left behind."""
    for settings, message in (
        (["precision=int8", "checkpoint=run.ckpt"],
         "python -m agegender.export checkpoint=run.ckpt output=model.int8.onnx precision=int8"),
        (["precision=int8", "oversample=true"], "not with oversample=true"),
        (["backend=onnxruntime", "oversample=true"], "not with oversample=true"),
    ):  # fmt: skip
        out = tmp_path / "out"
        run = subprocess.run(
            [sys.executable, "predict.py", f"input={SAMPLES}", f"output={out}", *settings],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 2, run.stderr[-1000:]
        assert message in run.stderr and "Traceback" not in run.stderr
        assert not out.exists()


def test_auto_takes_the_measured_choice_for_the_workload(cache: Path) -> None:
    from agegender.runtime.build import choose_backend
    from agegender.runtime.measure import write_record

    write_record(_record(("torch", "bf16"), ("onnxruntime", "fp32")))
    backend, precision, why = choose_backend("auto", workload="folder")
    assert (backend, precision) == ("torch", "bf16") and "measured fastest here" in why
    assert "torch bf16 200 faces/s" in why
    backend, precision, why = choose_backend("auto", workload="single")
    assert (backend, precision) == ("onnxruntime", "fp32") and "one photo" in why
    # backend=torch with precision=auto: the measured torch precision
    assert choose_backend("torch", workload="folder")[:2] == ("torch", "bf16")
    # asked for explicitly, or another network, device or crop: the record does not apply
    assert choose_backend("auto", precision="fp32")[:2] == ("onnxruntime", "fp32")
    assert choose_backend("auto", checkpoint="run.ckpt")[:2] == ("torch", "auto")
    assert choose_backend("auto", oversample=True)[0] == "torch"
    assert choose_backend("auto", device="cuda")[:2] == ("torch", "auto")


def test_without_torch_auto_never_picks_torch(cache: Path, monkeypatch) -> None:  # noqa: ANN001
    """A core install (no torch): neither a record that measured torch fastest nor an AMX
    CPU sends ``auto`` to torch while the original weights' ONNX export is there."""
    from agegender.runtime import build
    from agegender.runtime.measure import write_record

    monkeypatch.setattr(build, "cpu_has_fast_bf16", lambda: True)
    assert build.choose_backend("auto")[:2] == ("torch", "bf16")  # AMX with torch
    monkeypatch.setattr(build, "torch_available", lambda: False)
    assert build.choose_backend("auto")[:2] == ("onnxruntime", "fp32")
    write_record(_record(("torch", "bf16"), ("torch", "fp32")))
    assert build.choose_backend("auto", workload="folder")[:2] == ("onnxruntime", "fp32")
    assert build.choose_backend("auto", workload="single")[:2] == ("onnxruntime", "fp32")


def test_a_record_from_elsewhere_or_choosing_int8_is_ignored(cache: Path) -> None:
    from agegender.runtime.build import choose_backend
    from agegender.runtime.measure import write_record
    from agegender.runtime.measured import machine, read_record

    rule = ("onnxruntime", "fp32", "the original weights' ONNX export")
    other = {**machine(), "cpu": "another CPU"}
    write_record(_record(("torch", "bf16"), ("torch", "bf16"), machine=other))
    assert read_record()[0] is None and "another machine" in read_record()[1]
    assert choose_backend("auto") == rule
    write_record(_record(("onnxruntime", "int8"), ("onnxruntime", "fp32")))
    assert read_record()[0] is None and "no valid choice for folder" in read_record()[1]
    assert choose_backend("auto") == rule
    (cache / "auto_precision.json").write_text("{not json")
    assert read_record()[0] is None and "unreadable" in read_record()[1]
    assert choose_backend("auto") == rule


def test_the_environment_can_switch_the_record_off_or_name_another(
    cache: Path,
    monkeypatch,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    from agegender.runtime.build import choose_backend
    from agegender.runtime.measure import write_record
    from agegender.store import AUTO_RECORD_ENV

    write_record(_record(("torch", "bf16"), ("torch", "bf16")))
    assert choose_backend("auto")[:2] == ("torch", "bf16")
    monkeypatch.setenv(AUTO_RECORD_ENV, "none")
    assert choose_backend("auto") == ("onnxruntime", "fp32", "the original weights' ONNX export")
    other = write_record(_record(("torch", "fp32"), ("torch", "fp32")), tmp_path / "other.json")
    monkeypatch.setenv(AUTO_RECORD_ENV, str(other))
    assert choose_backend("auto")[:2] == ("torch", "fp32")


def test_int8_is_never_chosen_without_being_asked(cache: Path) -> None:
    from agegender.runtime.build import choose_backend
    from agegender.runtime.measure import write_record
    from agegender.store import original_int8_path

    original_int8_path().write_bytes(b"stand-in")
    write_record(_record(("onnxruntime", "fp32"), ("torch", "fp32")))
    for backend in ("auto", "torch", "onnxruntime"):
        for precision in ("auto", "fp32"):
            for workload in ("folder", "single"):
                chosen = choose_backend(backend, precision=precision, workload=workload)
                assert chosen[1] != "int8", (backend, precision, workload, chosen)
    assert choose_backend("auto", precision="int8")[:2] == ("onnxruntime", "int8")
    with pytest.raises(ValueError, match="python -m agegender.export checkpoint=run.ckpt"):
        choose_backend("auto", checkpoint="run.ckpt", precision="int8")
    for kwargs in ({"backend": "torch"}, {"device": "cuda"}, {"oversample": True}):
        with pytest.raises(ValueError, match="precision=int8 runs an int8 ONNX graph"):
            choose_backend(precision="int8", **kwargs)


@pytest.mark.slow  # ~150 s: a real measurement; the record's use per workload is tested above
def test_measure_records_the_fastest_eligible_path(monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    """A short real measurement: every path timed, bf16 checked against fp32's labels, the
    folder choice the eligible path with the highest rate, read back by ``auto``."""
    from agegender.runtime import build
    from agegender.runtime.measure import choose_folder, measure, write_record
    from agegender.runtime.measured import read_record
    from agegender.store import AUTO_RECORD_ENV, CACHE_ENV, cache_dir, original_checkpoint_path

    monkeypatch.delenv(AUTO_RECORD_ENV)  # conftest's "none": here the record is tested
    require(original_checkpoint_path().is_file(), "the original weights are not converted")
    source = cache_dir()
    cache = tmp_path / "cache"
    shutil.copytree(source, cache, ignore=shutil.ignore_patterns("*.whl", "auto_precision.json"))
    monkeypatch.setenv(CACHE_ENV, str(cache))
    record = measure(seconds=0.6, rounds=1, include_bf16=True)
    paths = [(c["backend"], c["precision"]) for c in record["candidates"]]
    assert ("torch", "fp32") in paths and ("torch", "bf16") in paths
    for c in record["candidates"]:
        assert c["faces_per_s"] > 0 and c["start_s"] > 0 and 0 <= c["label_agreement"] <= 1
    assert next(c for c in record["candidates"] if c["precision"] == "fp32")["eligible"]
    eligible = [c for c in record["candidates"] if c["eligible"]]
    best, margin = choose_folder(eligible)
    assert record["folder_margin"] == margin and "slowest round" in margin
    assert all(len(c["rounds_faces_per_s"]) == 1 for c in record["candidates"])
    assert record["choices"]["folder"] == {
        "backend": best["backend"],
        "precision": best["precision"],
    }
    write_record(record)
    assert read_record()[0] == json.loads(json.dumps(record))
    chosen = build.choose_backend("auto", workload="folder")
    assert chosen[:2] == (best["backend"], best["precision"])


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_int8_runs_end_to_end_with_its_agreement(tmp_path: Path) -> None:
    """The install step's int8 graph: its metadata holds the agreement it was kept with,
    predict.py precision=int8 runs it and gives fp32's labels on the sample photos, and an
    int8 graph asked to run as fp32 (or an fp32 graph as int8) is refused."""
    from agegender.export import read_metadata
    from agegender.runtime.build import build_classifier
    from agegender.runtime.quantize import MIN_AGREEMENT
    from agegender.store import original_int8_path, original_onnx_path

    int8 = original_int8_path()
    require(int8.is_file(), f"{int8} is missing: run `python -m agegender.weights original`")
    meta = read_metadata(int8)
    assert meta["precision"] == "int8"
    check = json.loads(meta["quantization"])["check"]
    assert min(check["argmax"].values()) >= MIN_AGREEMENT and check["faces"] >= 50
    outputs, stdout = {}, {}
    for precision in ("int8", "fp32"):
        run = subprocess.run(
            [sys.executable, "predict.py", f"input={SAMPLES}", f"output={tmp_path / precision}",
             "progress=false", "save_probs=true", f"precision={precision}"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        outputs[precision] = _rows(tmp_path / precision / "predictions.csv")
        stdout[precision] = run.stdout
    # the summary line says which graph ran and the agreement it was kept with
    assert (
        "(precision int8, onnxruntime: precision=int8: the original weights' int8 graph; "
        "argmax agreement with fp32 on "
    ) in stdout["int8"]
    assert f"age {check['argmax']['age']:.1%}" in stdout["int8"]
    quantized, exact = outputs["int8"], outputs["fp32"]
    assert len(quantized) == len(exact) >= 4
    for q, e in zip(quantized, exact, strict=True):
        assert (q["path"], q["age"], q["gender"]) == (e["path"], e["age"], e["gender"])
        probs = [k for k in q if k.startswith("p_")]
        assert max(abs(float(q[k]) - float(e[k])) for k in probs) <= 0.15
        assert any(float(q[k]) != float(e[k]) for k in probs)  # really another graph
    with pytest.raises(ValueError, match="is an int8 graph"):
        build_classifier(int8, precision="fp32", backend="onnxruntime")
    with pytest.raises(ValueError, match="precision=int8 needs an int8 one"):
        build_classifier(original_onnx_path(), precision="int8", backend="onnxruntime")


@pytest.mark.slow
def test_int8_export_prints_its_agreement_and_refuses_below_the_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegender.export import main
    from agegender.store import original_onnx_path

    require(original_onnx_path().is_file(), "the original weights' ONNX export is not cached")
    out = tmp_path / "model.int8.onnx"
    assert main([f"checkpoint={original_onnx_path()}", f"output={out}", "precision=int8"]) == 0
    line = capsys.readouterr().out
    assert "argmax agreement with fp32 on 100 held-out faces" in line and out.is_file()
    refused = tmp_path / "refused.onnx"
    args = [f"checkpoint={original_onnx_path()}", f"output={refused}", "precision=int8"]
    assert main([*args, "min_agreement=1.01"]) == 2
    assert "below min_agreement=1.01" in capsys.readouterr().err and not refused.exists()
    assert main([*args, "format=torchscript"]) == 2
    assert main([f"checkpoint={out}", f"output={refused}", "precision=int8"]) == 2
    assert "is already quantized (int8)" in capsys.readouterr().err


def _candidate(backend: str, precision: str, rounds: list[float]) -> dict:
    return {"backend": backend, "precision": precision, "rounds_faces_per_s": rounds,
            "faces_per_s": sorted(rounds)[len(rounds) // 2], "eligible": True}  # fmt: skip


def test_auto_leaves_onnxruntime_only_for_a_clear_repeatable_gain() -> None:
    """torch bf16 timed at 62 vs onnxruntime's 61 faces/s (6 s on a loaded machine) used to
    win every folder; now another path must beat onnxruntime fp32's fastest round by 15% in
    its own slowest round, and the record says by how much it did."""
    from agegender.runtime.measure import MIN_FOLDER_GAIN, choose_folder

    ort = _candidate("onnxruntime", "fp32", [58.0, 61.0, 60.0])
    close = _candidate("torch", "bf16", [63.0, 62.0, 60.0])
    chosen, margin = choose_folder([ort, close])
    assert chosen is ort and "torch bf16 0.98x in its slowest round" in margin
    noisy = _candidate("torch", "bf16", [95.0, 60.0, 90.0])  # one slow round: not repeatable
    assert choose_folder([ort, noisy])[0] is ort
    clear = _candidate("torch", "bf16", [80.0, 78.0, 82.0])  # 78 / 61 = 1.28x
    chosen, margin = choose_folder([ort, close, clear])
    assert chosen is clear and "1.28x" in margin and f"{MIN_FOLDER_GAIN:.2f}x" in margin
    torch_only = [_candidate("torch", "fp32", [20.0]), _candidate("torch", "bf16", [30.0])]
    assert choose_folder(torch_only)[0]["precision"] == "bf16"
