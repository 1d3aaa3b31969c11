"""backend=onnxruntime (the default on CPUs via auto): the exported nets give the PyTorch
path's faces and probabilities, and a whole prediction run never imports torch."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, SAMPLES, require


def _onnx_cached() -> None:
    from agegender.store import MTCNN_ONNX_NAMES as ONNX_NAMES
    from agegender.store import mtcnn_onnx_dir as onnx_dir
    from agegender.store import original_onnx_path

    require(
        original_onnx_path().is_file() and all((onnx_dir() / n).is_file() for n in ONNX_NAMES),
        "the exported nets are not cached: run `python -m agegender.weights original`",
    )


def test_onnx_classifier_preprocessing_and_probabilities_equal_torch(original_classifier) -> None:  # noqa: ANN001
    import torch

    from agegender.faces import align_face, build_detector
    from agegender.images import load_image
    from agegender.inference import Pipeline, iter_inputs
    from agegender.runtime.build import build_classifier
    from agegender.spec import ADIENCE_FRAMING

    _onnx_cached()
    onnx, meta = build_classifier(backend="onnxruntime")
    assert onnx.backend == "onnxruntime" and meta["format"] == "agegender.export.v1"
    assert onnx.labels == original_classifier.labels
    assert onnx.face_spec == original_classifier.face_spec
    pipeline = Pipeline(
        __import__("agegender.faces").faces.build_detector("mtcnn"), original_classifier
    )
    faces = []
    for item in iter_inputs(SAMPLES):
        result = pipeline.prepare(item)
        faces.extend(result.crops)
    # the same network input, bit for bit, from the array preset
    image = load_image(SAMPLES / "obama.jpg")
    aligned = align_face(image, build_detector("mtcnn").detect(image)[0], 256, ADIENCE_FRAMING)
    assert np.array_equal(onnx.preprocess(aligned), original_classifier.preprocess(aligned).numpy())
    expected = original_classifier.predict(torch.stack(faces))
    got = onnx.predict(onnx.stack([f.numpy() for f in faces]))
    for task in ("age", "gender"):
        assert float(np.abs(got[task] - expected[task]).max()) <= 1e-4
    # the session policy (agegender.onnx_session): idle threads sleep (the loaders need the
    # cores), and the classifier's weights stay as loaded (mapped from the weights file)
    config = onnx.session.get_session_options()
    assert config.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert config.get_session_config_entry("session.disable_prepacking") == "1"


def test_backend_rules(monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    """The rule ``auto`` follows without a speed measurement (tests/test_auto_precision.py
    covers the measured choice)."""
    from agegender.runtime import build
    from agegender.runtime.build import resolve_backend
    from agegender.store import CACHE_ENV

    _onnx_cached()
    monkeypatch.setattr(build, "measured_choice", lambda workload: None)
    assert resolve_backend("auto") == "onnxruntime"
    assert resolve_backend("auto", precision="fp32") == "onnxruntime"
    for kwargs in ({"device": "cuda"}, {"oversample": True}, {"precision": "bf16"}):
        assert resolve_backend("auto", **kwargs) == "torch"
    assert resolve_backend("auto", checkpoint="run.ckpt") == "torch"
    assert resolve_backend("auto", checkpoint="model.onnx") == "onnxruntime"
    assert resolve_backend("torch") == "torch"
    with pytest.raises(ValueError, match="ONNX export"):
        resolve_backend("torch", checkpoint="model.onnx")
    with pytest.raises(ValueError, match="oversample=true"):
        resolve_backend("onnxruntime", oversample=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("tensorrt")
    # nothing exported in the cache: auto falls back to torch, an explicit choice says why
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert resolve_backend("auto") == "torch"
    from agegender.runtime.build import build_classifier

    with pytest.raises(FileNotFoundError, match="python -m agegender.weights original"):
        build_classifier(backend="onnxruntime")
    from agegender.faces import build_detector

    with pytest.raises(FileNotFoundError, match="python -m agegender.weights original"):
        build_detector("mtcnn", backend="onnxruntime")
    assert build_detector("mtcnn", backend="auto").backend == "torch"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_py_on_onnxruntime_never_imports_torch_and_agrees_with_torch(
    tmp_path: Path,
) -> None:
    """A run on onnxruntime (what ``auto`` takes where it measured fastest, on every machine
    measured so far but AVX-512 BF16 and AMX ones) in a process where ``import torch``
    fails: it must not need it. Its
    labels equal backend=torch's; probabilities agree to 2e-3 (the classifier alone agrees
    to 1e-6; MTCNN's float rounding moves landmarks by ~1e-5 px, which can flip a few aligned
    pixels by one grey level)."""
    _onnx_cached()
    poison = tmp_path / "poison" / "torch"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text('raise ImportError("prediction imported torch")\n')
    base = [sys.executable, "predict.py", f"input={SAMPLES}", "progress=false", "save_probs=true"]
    env = {"PYTHONPATH": str(poison.parent), "PATH": "", "HOME": str(Path.home())}
    fast = subprocess.run(
        [*base, f"output={tmp_path / 'ort'}", "backend=onnxruntime"],
        cwd=REPO, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert fast.returncode == 0, fast.stderr
    assert "onnxruntime" in fast.stdout
    exact = subprocess.run(
        [*base, f"output={tmp_path / 'torch'}", "backend=torch"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert exact.returncode == 0, exact.stderr
    a, b = (
        _rows(tmp_path / "ort" / "predictions.csv"),
        _rows(tmp_path / "torch" / "predictions.csv"),
    )
    assert len(a) == len(b) >= 4
    for x, y in zip(a, b, strict=True):
        assert (x["path"], x["age"], x["gender"]) == (y["path"], y["age"], y["gender"])
        for key in ("x1", "y1", "x2", "y2"):
            assert abs(float(x[key]) - float(y[key])) <= 0.1
        probs = [k for k in x if k.startswith("p_")]
        assert max(abs(float(x[k]) - float(y[k])) for k in probs) <= 2e-3
    annotated = list((tmp_path / "ort" / "annotated").iterdir())
    assert len(annotated) == len(a)


def test_coarser_label_sets_sum_alike_on_both_backends(original_classifier) -> None:  # noqa: ANN001
    """labels=coarse3 on the original weights: bucket probabilities summed per class, the
    same on onnxruntime as on torch."""
    from agegender import AgeGender

    _onnx_cached()
    image = np.asarray(Image.open(SAMPLES / "biden.jpg").convert("RGB"))
    fast = AgeGender(labels="coarse3", backend="onnxruntime").predict(image)
    exact = AgeGender(labels="coarse3", backend="torch").predict(image)
    assert [f.age for f in fast] == [f.age for f in exact] == ["adult"]
    assert list(fast[0].age_probs) == ["child", "teen", "adult"]
    assert sum(fast[0].age_probs.values()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(
        list(fast[0].age_probs.values()), list(exact[0].age_probs.values()), atol=2e-3
    )
