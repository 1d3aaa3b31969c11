"""precision=auto|fp32|bf16 for prediction: what auto picks, and bf16 against fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agegender.faces import align_face, build_detector
from agegender.images import load_image
from agegender.runtime.torch_classifier import FaceClassifier, resolve_precision
from agegender.spec import ADIENCE_FRAMING

#: The largest bf16-vs-fp32 probability difference allowed on the sample faces (measured on an
#: AMX CPU over 47 real faces: 0.016; bf16 keeps 8 bits of mantissa, so 0.05 leaves room for
#: other kernels while a wrong path (no autocast exit, wrong dtype) moves labels and fails).
BF16_TOL = 0.05


def test_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    import agegender.runtime.torch_classifier as classifier

    monkeypatch.setattr(classifier, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(classifier, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for: given, native or not
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")


def test_auto_on_this_machine_matches_its_cpu_flags() -> None:
    from agegender.hardware import cpu_flags

    expected = "bf16" if "amx_bf16" in cpu_flags() else "fp32"
    assert resolve_precision("auto") == expected


def _sample_faces(samples_dir) -> list[np.ndarray]:  # noqa: ANN001
    """Every sample's MTCNN-aligned face, its box crop and their mirror images."""
    detector = build_detector("mtcnn")
    faces = []
    for path in sorted(samples_dir.iterdir()):
        if path.suffix not in {".jpg", ".png"}:
            continue
        image = load_image(path)
        for face in detector.detect(image):
            aligned = align_face(image, face, 256, ADIENCE_FRAMING)
            faces += [aligned, aligned[:, ::-1].copy()]
    return faces


def test_bf16_labels_equal_fp32_on_the_sample_faces(samples_dir, original_classifier) -> None:  # noqa: ANN001
    """bf16 runs everywhere (emulated where the CPU lacks it, only slower), so this test never
    needs to skip: the labels must not change, the probabilities only within BF16_TOL."""
    faces = _sample_faces(samples_dir)
    assert len(faces) >= 8
    model = original_classifier.model
    fp32 = FaceClassifier(model, precision="fp32")
    bf16 = FaceClassifier(model, precision="bf16")
    batch = torch.stack([fp32.preprocess(face) for face in faces])
    exact, low = fp32.predict(batch), bf16.predict(batch)
    for task in ("age", "gender"):
        assert low[task].dtype == np.float32
        np.testing.assert_array_equal(low[task].argmax(1), exact[task].argmax(1))
        assert np.abs(low[task] - exact[task]).max() <= BF16_TOL
    # bf16 really ran: the probabilities differ from the exact path somewhere.
    assert max(np.abs(low[t] - exact[t]).max() for t in ("age", "gender")) > 0


def test_fp32_stays_the_exact_path(samples_dir, original_classifier) -> None:  # noqa: ANN001
    faces = _sample_faces(samples_dir)[:2]
    model = original_classifier.model
    batch = torch.stack([original_classifier.preprocess(face) for face in faces])
    with torch.inference_mode():
        logits = model(batch.contiguous())
    reference = {t: torch.softmax(v, 1).numpy() for t, v in logits.items()}
    out = FaceClassifier(model, precision="fp32").predict(batch)
    for task in reference:
        np.testing.assert_allclose(out[task], reference[task], atol=1e-5)
