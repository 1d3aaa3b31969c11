"""Preprocessing: what gets cached (detected / fallback / given box / aligned), bad files,
and resuming after an interruption or a SIGKILL without lost or half-written entries."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pandas as pd
import pytest

from agegender.data.cache import FaceCache, read_index, write_shard
from agegender.data.preprocess import FaceOptions, run_preprocess
from agegender.faces import align_face, build_detector
from agegender.images import load_image
from agegender.spec import ADIENCE_FRAMING


def _jobs(paths, keys=None):
    return pd.DataFrame({"key": keys or [p.name for p in paths], "path": [str(p) for p in paths]})


def _tiles(tmp_path, n):
    """n small distinct RGB images (content = their number), for fast aligned-source runs."""
    paths = []
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        img[:4, :4] = i
        path = tmp_path / "in" / f"img{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


def test_aligned_source_is_caffes_bilinear_resize(tmp_path):
    """Adience's aligned faces become network input as Caffe's convert_imageset made them:
    cv::resize with its default interpolation, INTER_LINEAR (not INTER_AREA)."""
    paths = _tiles(tmp_path, 3)
    big = tmp_path / "in" / "big.png"  # Adience's aligned faces are larger than 256: shrunk
    cv2.imwrite(str(big), np.random.default_rng(1).integers(0, 255, (400, 300, 3), np.uint8))
    paths.append(big)
    report = run_preprocess(_jobs(paths), tmp_path / "c", FaceOptions("aligned"), progress=False)
    assert (report.processed, report.detected, report.errors) == (4, 0, 0)
    cache = FaceCache(tmp_path / "c")
    for p in paths:
        row = cache.index.loc[p.name]
        expected = cv2.resize(load_image(p), (256, 256), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(cache.face(row["shard"], row["offset"]), expected)


def test_mtcnn_detects_aligns_and_records(tmp_path, samples_dir):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 300, 3), 127, np.uint8))
    jobs = _jobs([samples_dir / "obama.jpg", blank])
    boxed = pd.DataFrame(
        {
            "key": ["boxed"],
            "path": [str(samples_dir / "obama.jpg")],
            "x1": [10.0],
            "y1": [20.0],
            "x2": [110.0],
            "y2": [140.0],
        }  # fmt: skip
    )
    report = run_preprocess(pd.concat([jobs, boxed]), tmp_path / "c", progress=False, workers=1)
    assert (report.detected, report.fallbacks, report.errors) == (1, 1, 0)
    cache = FaceCache(tmp_path / "c")
    image = load_image(samples_dir / "obama.jpg")
    face = build_detector("mtcnn").detect(image)[0]
    row = cache.index.loc["obama.jpg"]
    assert row["detected"] and row["fallback"] == "" and row["det_score"] > 0.9
    landmarks = row[[f"lm{i}{a}" for i in range(5) for a in "xy"]].to_numpy(float)
    np.testing.assert_allclose(landmarks.reshape(5, 2), face.landmarks, atol=1e-3)
    cached = cache.face(row["shard"], row["offset"])
    by_hand = align_face(image, face, 256, ADIENCE_FRAMING)
    assert np.abs(cached.astype(int) - by_hand.astype(int)).max() <= 1
    row = cache.index.loc["blank.png"]
    assert not row["detected"] and row["fallback"] == "no_face:centre"
    assert math.isnan(row["det_score"])
    row = cache.index.loc["boxed"]
    assert row["fallback"] == "given_box" and not row["detected"]
    from agegender.faces import Face

    box = Face(box=(10.0, 20.0, 110.0, 140.0), score=0.0)
    given = align_face(image, box, 256, ADIENCE_FRAMING)  # a given box: MTCNN-like
    assert np.array_equal(cache.face(row["shard"], row["offset"]), given)


def test_missing_and_broken_files_are_reported_not_fatal(tmp_path):
    good = _tiles(tmp_path, 2)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    jobs = _jobs([good[0], tmp_path / "gone.jpg", broken, good[1]])
    report = run_preprocess(jobs, tmp_path / "c", FaceOptions("aligned"), progress=False)
    assert (report.processed, report.missing, report.errors) == (4, 1, 1)
    assert any("gone.jpg" in p for p in report.problems)
    rows = FaceCache(tmp_path / "c").all_rows
    assert rows.loc["gone.jpg", "status"] == "missing" and rows.loc["gone.jpg", "offset"] == -1
    assert rows.loc["broken.jpg", "status"] == "error"
    assert rows.loc["broken.jpg", "error"] == "not an image"
    assert len(FaceCache(tmp_path / "c")) == 2


def _assert_complete_and_equal(cache_dir, reference_dir, keys):
    index = read_index(cache_dir)
    assert sorted(index["key"]) == sorted(keys)  # every key exactly once
    cache, ref = FaceCache(cache_dir), FaceCache(reference_dir)
    for shard in sorted(set(index["shard"])):
        n_ok = int((index[index["shard"] == shard]["offset"] >= 0).sum())
        assert np.load(cache_dir / f"shard_{shard:05d}.npy", mmap_mode="r").shape[0] == n_ok
    for key in keys:
        a, b = cache.index.loc[key], ref.index.loc[key]
        assert np.array_equal(
            cache.face(a["shard"], a["offset"]), ref.face(b["shard"], b["offset"])
        )


def test_interrupted_run_resumes_without_loss(tmp_path):
    paths = _tiles(tmp_path, 10)
    jobs, options = _jobs(paths), FaceOptions("aligned")
    run_preprocess(jobs, tmp_path / "ref", options, progress=False, chunk_size=3)

    def stop_after_two(n):
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_preprocess(jobs, tmp_path / "c", options, chunk_size=3, progress=False,
                       workers=1, on_chunk=stop_after_two)  # fmt: skip
    assert len(read_index(tmp_path / "c")) == 6
    (tmp_path / "c" / ".shard_00002.npy.tmp123").write_bytes(b"half")  # a killed write
    report = run_preprocess(jobs, tmp_path / "c", options, chunk_size=3, progress=False)
    assert (report.already_done, report.processed) == (6, 4)
    assert not list((tmp_path / "c").glob(".*tmp*"))
    _assert_complete_and_equal(tmp_path / "c", tmp_path / "ref", list(jobs["key"]))


SCRIPT = """
import sys, time, pandas as pd
from agegender.data.preprocess import FaceOptions, run_preprocess
jobs = pd.read_csv(sys.argv[1])
run_preprocess(jobs, sys.argv[2], FaceOptions("aligned"), workers=2, chunk_size=2,
               progress=False, on_chunk=lambda n: time.sleep(0.2))
"""


def test_sigkilled_parallel_run_resumes(tmp_path):
    paths = _tiles(tmp_path, 40)
    jobs = _jobs(paths)
    jobs.to_csv(tmp_path / "jobs.csv", index=False)
    cache_dir = tmp_path / "c"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "jobs.csv"), str(cache_dir)],
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(list(cache_dir.glob("shard_*.csv"))) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline, "preprocessing never wrote a shard"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers, mid-flight
    proc.wait()
    done = len(read_index(cache_dir))
    assert 0 < done < len(jobs)
    run_preprocess(jobs, tmp_path / "ref", FaceOptions("aligned"), progress=False)
    report = run_preprocess(jobs, cache_dir, FaceOptions("aligned"), progress=False, workers=2)
    assert report.already_done == done and report.processed == len(jobs) - done
    _assert_complete_and_equal(cache_dir, tmp_path / "ref", list(jobs["key"]))


def test_shard_writer_rejects_inconsistent_index(tmp_path):
    images = np.zeros((1, 8, 8, 3), np.uint8)
    index = pd.DataFrame({"key": ["a", "b"], "status": ["ok", "ok"], "offset": [0, 1]})
    with pytest.raises(ValueError, match="offsets"):
        write_shard(tmp_path, 0, images, index)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # ~21 s: the command on a demo tree; the functions are tested above
def test_command_line_entry_on_a_demo_root(tmp_path):
    root = tmp_path / "demo"
    cmd = [sys.executable, "-m", "agegender.data.preprocess", "data=demo", f"data.root={root}",
           "data.demo_users=5", "data.demo_images_per_user=1", "data.preprocess.progress=false",
           f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "rows: 5 (already cached: 0, processed now: 5)" in done.stderr
    cache_dir = root / "cache" / FaceOptions("aligned").cache_name()
    assert f"cache: {cache_dir}" in done.stderr
    assert len(FaceCache(cache_dir)) == 5
    cmd = [*cmd[:3], f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "missing fold_0_data.txt" in done.stderr
