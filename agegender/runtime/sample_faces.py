"""Real aligned faces for measuring the runtimes (``precision=auto``) and calibrating int8.

Speed hardly depends on pixel values, but int8 ranges and bf16 label checks do: both need
real faces, aligned exactly as prediction aligns them (the detector, then
:func:`agegender.faces.align.align_face` at the network's face size). By default these are
the faces of the project's sample photos (``data/samples``, public domain); a user's folder
of photos or face crops can stand in for them (``faces=FOLDER``).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from agegender.faces.align import align_face
from agegender.faces.registry import build_detector, detector_config
from agegender.images import ImageLoadError, image_extensions, load_image
from agegender.spec import ADIENCE_FRAMING, Framing

#: The sample photos shipped with the project (present in a clone or editable install).
SAMPLES_DIR: Path = Path(__file__).resolve().parents[2] / "data" / "samples"


def real_faces(
    folder: str | os.PathLike[str] | None = None,
    face_size: int = 256,
    framing: Framing = ADIENCE_FRAMING,
) -> list[np.ndarray]:
    """face_size x face_size x 3 uint8 RGB faces of every image in ``folder`` (default the
    sample photos): each face MTCNN finds, aligned with ``framing`` (the network's); an image
    where it finds none is taken as an already cropped face (resized) when it is roughly
    square, else left out.

    Raises FileNotFoundError when the folder is missing or yields no face."""
    source = Path(folder) if folder is not None else SAMPLES_DIR
    if not source.is_dir():
        hint = " (a clone of the project has them; or give faces=FOLDER)" if folder is None else ""
        raise FileNotFoundError(f"no folder of face photos at {str(source)!r}{hint}")
    extensions = image_extensions()
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in extensions)
    detector = build_detector(detector_config("mtcnn", device="cpu", backend="auto"))
    faces = []
    for path in files:
        try:
            image = load_image(path)
        except ImageLoadError:
            continue  # a bad file among the user's faces is not worth stopping for
        found = detector.detect(image)
        faces += [align_face(image, face, face_size, framing) for face in found]
        h, w = image.shape[:2]
        if not found and 0.8 <= w / h <= 1.25:
            faces.append(cv2.resize(image, (face_size, face_size), interpolation=cv2.INTER_AREA))
    if not faces:
        raise FileNotFoundError(f"no face found in the images of {str(source)!r}")
    return faces


def face_views(faces: list[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """``n`` views of ``faces`` as a detector's jitter and real photos vary them: small
    shifts, scales and rotations (a few pixels and degrees, what alignment leaves), mirror
    images, brightness and contrast from 0.7 to 1.3, and some blur. Seeded: reproducible."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        face = faces[i % len(faces)]
        size = face.shape[0]
        angle = rng.uniform(-8, 8)
        scale = rng.uniform(0.92, 1.08)
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
        matrix[:, 2] += rng.uniform(-0.04, 0.04, size=2) * size
        view = cv2.warpAffine(face, matrix, (size, size), borderMode=cv2.BORDER_REFLECT101)
        if rng.random() < 0.5:
            view = view[:, ::-1]
        gain, contrast = rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.3)
        values = (view.astype(np.float32) - 128.0) * contrast + 128.0 * gain
        view = np.clip(values, 0, 255).astype(np.uint8)
        if rng.random() < 0.3:
            view = cv2.GaussianBlur(view, (5, 5), rng.uniform(0.5, 1.5))
        out.append(np.ascontiguousarray(view))
    return out
