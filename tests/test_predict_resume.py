"""Prediction at scale: resume after a kill, shards + merge (agegender.inference.run/merge).

Exact comparisons use ``batch_size=1`` and one PyTorch thread on both sides: a face's
probabilities then come from the same single-sample computation whatever the run, so a
resumed or sharded CSV must equal an uninterrupted run's byte for byte (with larger
batches float noise may move a 4th decimal, see test_predict's batching test).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from agegender.checkpoints import save_model
from agegender.faces import build_detector
from agegender.inference import predict
from agegender.inference.csv_writer import CsvWriter as PredictionWriter
from agegender.inference.merge import main as merge_main
from agegender.inference.merge import merge_shards
from agegender.inference.shards import ShardError, done_path, shard_slice
from agegender.inference.writer import ResumeError
from agegender.models import LeviHassnerNet
from agegender.runtime.build import build_classifier

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 30


def _make_folder(folder: Path, n: int) -> Path:
    """``n`` tiny noise JPEGs (distinct, so their probabilities differ), a non-image file
    (skipped.txt) and a bad ``.jpg`` (an error row) sorted in the middle."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"img_{i:04d}.jpg"), rng.integers(0, 256, (40, 32, 3), np.uint8))
    (folder / "img_0005_bad.jpg").write_text("not a jpeg")
    (folder / "notes.txt").write_text("not an input")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared-trunk Levi-Hassner net with fixed random weights (half the cost of the
    two-trunk original; nothing to download), for in-process and CLI runs alike."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "shared.pt"
    return save_model(LeviHassnerNet(mode="shared"), "levi_hassner", {"mode": "shared"}, path)


@pytest.fixture(scope="module")
def classifier(checkpoint: Path):  # noqa: ANN201
    return build_classifier(checkpoint)[0]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """CLI runs below use threads=1; the in-process reference must compute the same way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(folder: Path, out: Path, classifier, **kwargs):  # noqa: ANN001, ANN202
    options = {"batch_size": 1, "workers": 1, "annotate": False, "progress": False} | kwargs
    return predict(folder, out, build_detector("none"), classifier, **options)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_folder(tmp_path_factory.mktemp("resume") / "in", N_IMAGES)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, folder, classifier) -> bytes:  # noqa: ANN001
    """predictions.csv of one uninterrupted run (one thread, batch 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("reference")
        summary = _run(folder, out, classifier)
    finally:
        torch.set_num_threads(before)
    assert summary.inputs == N_IMAGES + 1 and summary.errors == 1
    return (out / "predictions.csv").read_bytes()


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


# -- resume ----------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 7, 20])
def test_resume_after_torn_write_equals_uninterrupted(
    tmp_path, folder, classifier, reference, one_thread, keep
) -> None:
    """A kill mid-write leaves the header, ``keep`` rows and half a row: resume cuts the half
    row, predicts only the rest, and the file equals the uninterrupted run's."""
    lines = _lines(reference)
    torn = lines[keep + 1][: len(lines[keep + 1]) // 2]
    (tmp_path / "predictions.csv").write_bytes(b"".join(lines[: keep + 1]) + torn)
    summary = _run(folder, tmp_path, classifier, resume=True)
    assert (tmp_path / "predictions.csv").read_bytes() == reference
    assert summary.already_done == keep
    assert summary.inputs == N_IMAGES + 1 - keep
    assert any("torn last line cut" in r for r in summary.repairs)
    assert f", {keep} already done in" in summary.line()


def test_resume_of_a_complete_file_does_nothing(tmp_path, folder, classifier, reference) -> None:
    (tmp_path / "predictions.csv").write_bytes(reference)
    summary = _run(folder, tmp_path, classifier, resume=True)
    assert summary.inputs == 0 and summary.already_done == N_IMAGES + 1
    assert (tmp_path / "predictions.csv").read_bytes() == reference


def test_without_resume_an_existing_csv_is_replaced(
    tmp_path, folder, classifier, reference, one_thread
) -> None:
    (tmp_path / "predictions.csv").write_bytes(reference + reference)
    summary = _run(folder, tmp_path, classifier)
    assert summary.already_done == 0
    assert (tmp_path / "predictions.csv").read_bytes() == reference


def test_resume_refuses_other_columns(tmp_path, folder, classifier, reference) -> None:
    (tmp_path / "predictions.csv").write_bytes(reference[: len(reference) // 2])
    before = (tmp_path / "predictions.csv").read_bytes()
    with pytest.raises(ResumeError, match="save_probs=True"):
        _run(folder, tmp_path, classifier, resume=True, save_probs=True)
    assert (tmp_path / "predictions.csv").read_bytes() == before  # untouched


def _result(path: str, n_faces: int):  # noqa: ANN202
    from agegender.faces import Face
    from agegender.inference import FaceResult, ImageResult, InputItem
    from agegender.labels import ADIENCE8

    probs = {"age": np.full(8, 1 / 8), "gender": np.full(2, 0.5)}
    faces = [
        FaceResult.decode(Face(box=(i, i, i + 10.0, i + 10.0), score=0.9), probs, ADIENCE8)
        for i in range(n_faces)
    ]
    return ImageResult(InputItem(path, path), faces=faces)


def test_torn_rows_of_a_multi_face_input_are_all_redone(tmp_path) -> None:
    """A torn write may have left faces 0 and 1 of an input but not face 2: the input's
    complete rows go too (it is redone), the inputs before it stay done."""
    path = tmp_path / "predictions.csv"
    with PredictionWriter(path) as writer:
        writer.write(_result("a,1.jpg", 2))  # a comma: the path is quoted in the CSV
        writer.write(_result("b.jpg", 3))
    full = path.read_bytes()
    lines = _lines(full)
    assert len(lines) == 6
    path.write_bytes(b"".join(lines[:5]) + lines[5][:9])  # b.jpg's face 2 torn
    with PredictionWriter(path, resume=True) as writer:
        assert writer.done == {"a,1.jpg"} and writer.rows == 2
        assert any("rows of b.jpg dropped" in r for r in writer.repairs)
        writer.write(_result("b.jpg", 3))
    assert path.read_bytes() == full
    # A torn line that is a different input keeps the complete input before it.
    path.write_bytes(b"".join(lines[:3]) + b"c.j")
    with PredictionWriter(path, resume=True) as writer:
        assert writer.done == {"a,1.jpg"} and writer.rows == 2
    assert path.read_bytes() == b"".join(lines[:3])


def test_torn_header_starts_afresh(tmp_path) -> None:
    path = tmp_path / "predictions.csv"
    path.write_bytes(b"path,face,x1")
    with PredictionWriter(path, resume=True) as writer:
        assert writer.done == set() and writer.repairs == ["torn header rewritten"]
    assert path.read_bytes() == writer.header.encode()


def test_resume_skips_done_video_frames(tmp_path, classifier, one_thread) -> None:
    video = tmp_path / "in" / "clip.mp4"
    video.parent.mkdir()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    rng = np.random.default_rng(1)
    for _ in range(10):
        writer.write(rng.integers(0, 256, (48, 64, 3), np.uint8))
    writer.release()
    full = _run(video.parent, tmp_path / "a", classifier, video_stride=2)
    assert full.inputs == 5
    reference = (tmp_path / "a" / "predictions.csv").read_bytes()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "predictions.csv").write_bytes(b"".join(_lines(reference)[:3]))
    summary = _run(video.parent, tmp_path / "b", classifier, video_stride=2, resume=True)
    assert summary.already_done == 2 and summary.inputs == 3
    assert (tmp_path / "b" / "predictions.csv").read_bytes() == reference


def test_resume_keeps_annotated_copies_consistent(tmp_path, folder, classifier) -> None:
    """Annotated copies of done inputs stay, a killed copy's temporary is removed, and every
    input ends with its copy; skipped.txt is rewritten from the folder."""
    out = tmp_path / "out"
    _run(folder, out, classifier, annotate=True)
    csv = out / "predictions.csv"
    csv.write_bytes(b"".join(_lines(csv.read_bytes())[:4]))
    kept = out / "annotated" / "img_0001.jpg"
    stamp = kept.stat().st_mtime_ns
    (out / "annotated" / "img_0009.jpg").unlink()  # its rows were not written either
    (out / "annotated" / ".img_0009.jpg.tmpk3x9_a1").write_bytes(b"half")  # atomic_write's
    (out / "skipped.txt").unlink()
    summary = _run(folder, out, classifier, annotate=True, resume=True)
    assert summary.already_done == 3
    assert kept.stat().st_mtime_ns == stamp  # done inputs are not redone
    names = sorted(p.name for p in (out / "annotated").iterdir())
    assert names == sorted(p.name for p in folder.glob("*.jpg") if "bad" not in p.name)
    assert (out / "skipped.txt").read_text() == f"{folder / 'notes.txt'}\n"


# -- shards ----------------------------------------------------------------------------------


def test_shard_slices_are_contiguous_blocks_covering_everything() -> None:
    items = list(range(10))
    blocks = [shard_slice(items, i, 3) for i in range(3)]
    assert blocks == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [shard_slice([1, 2], i, 4) for i in range(4)] == [[1], [2], [], []]
    with pytest.raises(ShardError):
        shard_slice(items, 3, 3)


def test_shard_resume_and_merge(tmp_path, folder, classifier, reference, one_thread) -> None:
    """Shards in-process: shard 1 killed (torn) then resumed; the merge refuses a missing,
    an incomplete and a modified shard, naming it, and then equals the single run."""
    out = tmp_path / "out"
    _run(folder, out, classifier, shard=0, num_shards=3)
    with pytest.raises(ShardError, match="shard 1 of 3 is missing"):
        merge_shards(out)
    _run(folder, out, classifier, shard=1, num_shards=3)
    _run(folder, out, classifier, shard=2, num_shards=3)
    shard1 = out / "predictions.shard-1-of-3.csv"
    complete = shard1.read_bytes()
    shard1.write_bytes(complete[:-7])  # killed mid-row: no marker either
    done_path(shard1).unlink()
    with pytest.raises(ShardError, match="shard 1 of 3 is incomplete"):
        merge_shards(out)
    summary = _run(folder, out, classifier, shard=1, num_shards=3, resume=True)
    assert summary.already_done == len(_lines(complete)) - 2 and summary.inputs == 1
    assert shard1.read_bytes() == complete
    with open(shard1, "ab") as fh:
        fh.write(_lines(complete)[1])
    with pytest.raises(ShardError, match="shard 1 of 3 changed"):
        merge_shards(out)
    shard1.write_bytes(complete)
    path, rows = merge_shards(out)
    assert path == out / "predictions.csv" and rows == N_IMAGES + 1
    assert path.read_bytes() == reference
    # A refused resume (other columns) leaves a finished shard finished.
    with pytest.raises(ResumeError):
        _run(folder, out, classifier, shard=1, num_shards=3, resume=True, save_probs=True)
    assert done_path(shard1).is_file() and shard1.read_bytes() == complete


def test_merge_command_refuses_a_missing_shard(tmp_path, folder, classifier, capsys) -> None:
    out = tmp_path / "out"
    _run(folder, out, classifier, shard=1, num_shards=2)
    assert merge_main([str(out)]) == 2
    err = capsys.readouterr().err
    assert "shard 0 of 2 is missing" in err and "shard=0 num_shards=2" in err
    assert not (out / "predictions.csv").exists()


def test_sharded_multirun_merges_into_the_single_run_csv(
    tmp_path, folder, checkpoint, reference
) -> None:
    """The real entry point: ``predict.py -m shard=0,1,2 num_shards=3`` (basic launcher),
    merged at the end of the multirun by the callback of conf/predict.yaml."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "predict.py", "-m", f"input={folder}", f"output={out}",
        "detector=none", f"checkpoint={checkpoint}", "batch_size=1", "workers=1",
        "threads=1", "annotate=false", "progress=false", "shard=0,1,2", "num_shards=3",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"merge: 3 shards, {N_IMAGES + 1} rows" in proc.stdout
    merged = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    single = pd.read_csv(pd.io.common.BytesIO(reference), keep_default_na=False)
    pd.testing.assert_frame_equal(merged, single)
    for i in range(3):
        assert (out / f"predictions.shard-{i}-of-3.csv").is_file()
        assert (out / "jobs" / str(i) / ".hydra" / "config.yaml").is_file()


# -- a real kill -9 --------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, checkpoint, classifier) -> None:
    """SIGKILL a real ``predict.py`` once its CSV has rows, resume it, and compare with an
    uninterrupted run: every input exactly once, same rows, same order; annotated copies
    exactly for the inputs; a changed column set is refused with exit code 2. (~30 s)"""
    folder = _make_folder(tmp_path / "in", 300)
    out = tmp_path / "out"
    cmd = [
        sys.executable, "predict.py", f"input={folder}", f"output={out}", "detector=none",
        f"checkpoint={checkpoint}", "batch_size=1", "workers=1", "threads=1",
        "progress=false",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    csv = out / "predictions.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if csv.is_file() and csv.read_bytes().count(b"\n") > 30:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    killed = pd.read_csv(csv, keep_default_na=False)
    assert 30 <= len(killed) < 301 and killed["path"].is_unique

    resumed = subprocess.run([*cmd, "resume=true"], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    match = re.search(r"predict: (\d+) inputs, .* (\d+) already done", resumed.stdout)
    assert match, resumed.stdout
    inputs, done = int(match.group(1)), int(match.group(2))
    # all killed rows are kept, except those of an input a torn last line may belong to
    assert done in (len(killed), len(killed) - 1) and inputs + done == 301

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(folder, tmp_path / "ref", classifier)
    finally:
        torch.set_num_threads(before)
    got = pd.read_csv(csv, keep_default_na=False)
    want = pd.read_csv(tmp_path / "ref" / "predictions.csv", keep_default_na=False)
    assert got["path"].is_unique and len(got) == 301
    pd.testing.assert_frame_equal(got, want)
    assert csv.read_bytes() == (tmp_path / "ref" / "predictions.csv").read_bytes()
    annotated = {p.name for p in (out / "annotated").iterdir()}
    assert annotated == {p.name for p in folder.glob("*.jpg") if "bad" not in p.name}

    shutil.copy(csv, tmp_path / "before.csv")
    refused = subprocess.run(
        [*cmd, "resume=true", "save_probs=true"], cwd=REPO, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "cannot resume" in refused.stderr
    assert csv.read_bytes() == (tmp_path / "before.csv").read_bytes()


@pytest.mark.parametrize("launcher", ["local_parallel", "slurm"])
def test_launchers_compose_with_predict(launcher: str) -> None:
    """Both launcher configs compose with predict.yaml; jobs share ``output`` as sweep dir,
    keep their Hydra files apart, and the merge callback is configured."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=["input=x", "output=/o", "num_shards=4", f"hydra/launcher={launcher}"],
            return_hydra_config=True,
        )
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert sweep == {"dir": "${output}", "subdir": "jobs/${hydra.job.num}"}
    assert cfg.hydra.sweep.dir == "/o"
    assert "_target_" in cfg.hydra.launcher and cfg.shard == 0 and cfg.resume is False
    callback = OmegaConf.to_container(cfg.hydra.callbacks.merge_shards)
    assert callback == {"_target_": "agegender.inference.merge.MergeShardsCallback"}


# -- format=jsonl: the same guarantees ---------------------------------------------------------


@pytest.fixture(scope="module")
def jsonl_reference(tmp_path_factory, folder, classifier) -> bytes:  # noqa: ANN001
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("jsonl_reference")
        _run(folder, out, classifier, format="jsonl")
    finally:
        torch.set_num_threads(before)
    return (out / "predictions.jsonl").read_bytes()


def test_jsonl_torn_resume_and_shard_merge_equal_one_run(
    tmp_path,
    folder,
    classifier,
    jsonl_reference,
    one_thread,  # noqa: ANN001
) -> None:
    import json

    lines = _lines(jsonl_reference)
    assert len(lines) == N_IMAGES + 1
    objects = [json.loads(line) for line in lines]
    assert sum(o["status"].startswith("error: ") for o in objects) == 1
    # killed mid-line: the torn object is cut and its input redone, nothing else
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "predictions.jsonl").write_bytes(b"".join(lines[:12]) + lines[12][:-10])
    summary = _run(folder, out, classifier, format="jsonl", resume=True)
    assert summary.already_done == 12 and summary.inputs == N_IMAGES + 1 - 12
    assert any("torn last line cut" in r for r in summary.repairs)
    assert (out / "predictions.jsonl").read_bytes() == jsonl_reference
    # a fragment too short to name its input may be the last complete input's: that one
    # is redone too (as in the CSV), never kept half-written
    (out / "predictions.jsonl").write_bytes(b"".join(lines[:12]) + lines[12][:5])
    summary = _run(folder, out, classifier, format="jsonl", resume=True)
    assert summary.already_done == 11 and summary.inputs == N_IMAGES + 1 - 11
    assert (out / "predictions.jsonl").read_bytes() == jsonl_reference
    # shards into .jsonl files, merged by the command, equal the single run
    sharded = tmp_path / "sharded"
    for shard in range(3):
        _run(folder, sharded, classifier, format="jsonl", shard=shard, num_shards=3)
    assert merge_main([str(sharded), "--format", "jsonl"]) == 0
    assert (sharded / "predictions.jsonl").read_bytes() == jsonl_reference
    assert not (sharded / "predictions.csv").exists()
    # a file that is not agegender's JSON Lines is refused, untouched
    other = tmp_path / "other"
    other.mkdir()
    (other / "predictions.jsonl").write_text('["not", "an", "object"]\n')
    with pytest.raises(ResumeError, match="not an object"):
        _run(folder, other, classifier, format="jsonl", resume=True)
    assert (other / "predictions.jsonl").read_text() == '["not", "an", "object"]\n'
