"""Where faces sit in the crop: the figures behind the ``adience`` framing.

1. The template, derived from the original nets' training mean image (``--mean``, the
   ``mean.binaryproto`` of the Levi-Hassner release): MTCNN's five landmarks on it, averaged
   over several sides (:func:`agegender.faces.framing.derive_template`), against the stored
   :data:`agegender.spec.ADIENCE_FRAMING`. Two checks: the mean image aligned by its own
   landmarks gives back the mean image (mean |difference| in grey levels), and the mean of the
   photos' aligned faces matches the mean image (normalised cross-correlation of blurred grey
   images; the legacy framing for comparison) with its landmarks where the template has them.
2. ``--calibrate``: each detector's box geometry (:data:`agegender.faces.types.BoxPoints`),
   fitted on the faces of ``--photos`` (and their mirror images) that it and MTCNN both find,
   against the stored values; the crop it gives under the adience framing (scale and where
   the box centre sits); and how far the landmarks of box-framed faces land from the template
   (median over faces, in units of the crop side), against the legacy centred 1.6 crop.
3. Labels of the original weights on ``--photos``, legacy framing vs adience: the share of faces
   per age group and how many labels change.

    python benchmarks/bench_framing.py --mean PATH/mean.binaryproto [--photos DIR ...]
    python benchmarks/bench_framing.py --calibrate --photos data/samples DIR ...
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
from pathlib import Path

import cv2
import numpy as np

from agegender.faces import Face, align_face, box_crop, build_detector
from agegender.faces.framing import (
    derive_template,
    fit_box_points,
    matched_pairs,
    mean_image_landmarks,
    mean_image_rgb,
    template_error,
)
from agegender.faces.registry import _detector_class
from agegender.images import image_extensions, load_image
from agegender.spec import ADIENCE_FRAMING, LEGACY_FRAMING

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
BOX_DETECTORS = ("haar", "opencv_ssd", "mtcnn", "retinaface")


def photos(folders: list[Path]) -> list[tuple[str, np.ndarray]]:
    exts = image_extensions()
    out = []
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in exts):
            out.append((path.name, load_image(path)))
    return out


def grey(image: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float64)
    return cv2.GaussianBlur(g, (0, 0), 4)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def template_section(mean_path: Path, images: list[tuple[str, np.ndarray]]) -> None:
    from agegender.caffe_io import read_blobproto

    mtcnn = build_detector("mtcnn")
    blob = read_blobproto(mean_path.read_bytes())
    mean = mean_image_rgb(blob.reshape(blob.shape[-3:]))
    derived = derive_template(mean, mtcnn)
    print(f"mean image {mean_path.name}: {mean.shape[1]} x {mean.shape[0]}")
    print("template (units of the side)   derived            stored (adience)   legacy")
    names = ("left eye", "right eye", "nose", "mouth left", "mouth right")
    for name, d, s, old in zip(
        names, derived, ADIENCE_FRAMING.template, LEGACY_FRAMING.template, strict=True
    ):
        print(
            f"  {name:<12} ({d[0]:.4f}, {d[1]:.4f})   ({s[0]:.4f}, {s[1]:.4f})   "
            f"({old[0]:.4f}, {old[1]:.4f})"
        )
    same = np.abs(np.subtract(derived, ADIENCE_FRAMING.template)).max()
    print(f"derived vs stored: max |difference| {same:.4f} of the side")
    size = mean.shape[0]
    landmarks = (mean_image_landmarks(mean, mtcnn) * size).astype(np.float32)
    face = Face((0.0, 0.0, float(size), float(size)), 1.0, landmarks)
    for framing in (ADIENCE_FRAMING, LEGACY_FRAMING):
        aligned = align_face(mean, face, size, framing)
        diff = np.abs(grey(aligned) - grey(mean)).mean()
        raw = np.abs(aligned.astype(float) - mean.astype(float)).mean()
        print(
            f"mean image aligned by its own landmarks, {framing.name:<8}: mean |difference| "
            f"{raw:.2f} grey levels (blurred grey {diff:.2f})"
        )
    if not images:
        return
    for framing in (ADIENCE_FRAMING, LEGACY_FRAMING):
        faces = []
        for _, image in images:
            for found in mtcnn.detect(image):
                crop = align_face(image, found, size, framing)
                faces += [crop, crop[:, ::-1]]
        average = np.mean(faces, axis=0)
        found = mtcnn.detect(np.clip(np.rint(average), 0, 255).astype(np.uint8))
        where = ""
        if found and found[0].landmarks is not None:
            got = found[0].landmarks / size
            error = np.abs(got - np.asarray(ADIENCE_FRAMING.template)).max()
            where = f"; its landmarks vs the mean image's: max |difference| {error:.3f} of the side"
        print(
            f"mean of {len(faces)} aligned faces (with mirrors), {framing.name:<8}: NCC with the "
            f"mean image {ncc(grey(average), grey(mean)):.3f}{where}"
        )


def calibrate_section(images: list[tuple[str, np.ndarray]]) -> None:
    mtcnn = build_detector("mtcnn")
    marked = {}
    for name, image in images:
        for mirrored, view in ((False, image), (True, np.ascontiguousarray(image[:, ::-1]))):
            marked[(name, mirrored)] = (view, mtcnn.detect(view))
    print(f"box geometry, fitted on {len(images)} photos and their mirror images")
    for detector_name in BOX_DETECTORS:
        detector = build_detector(detector_name)
        stored = _detector_class(detector_name).box_points
        pairs = []
        for view, faces in marked.values():
            boxes = [Face(f.box, f.score) for f in detector.detect(view)]
            pairs += matched_pairs(boxes, faces)
        if not pairs:
            print(f"  {detector_name}: no face found by both detectors")
            continue
        fitted = fit_box_points(pairs)
        worst = np.abs(np.subtract(fitted, stored)).max()
        print(f"  {detector_name}: {len(pairs)} faces; fitted {fitted}")
        print(f"    stored {stored} (max |difference| {worst:.4f})")
        scale, centre = box_crop(ADIENCE_FRAMING, stored)
        print(
            f"    adience crop: {scale:.3f} x the box's longer side, box centre at "
            f"({centre[0]:.3f}, {centre[1]:.3f}) of the crop"
        )
        for framing in (ADIENCE_FRAMING, LEGACY_FRAMING):
            errors = [
                template_error(box.box, face.landmarks, framing, stored) for box, face in pairs
            ]
            print(
                f"    {framing.name:<8} box crop: landmarks land {np.median(errors):.3f} of the "
                f"side from the template (median over faces; 90th percentile "
                f"{np.percentile(errors, 90):.3f})"
            )


def labels_section(images: list[tuple[str, np.ndarray]]) -> None:
    from agegender import AgeGender

    model = AgeGender(backend="onnxruntime")
    classifier = model.classifier
    spec = classifier.face_spec
    groups = classifier.labels.class_names["age"]
    table: dict[str, collections.Counter] = {}
    labels: dict[str, list[tuple[str, str]]] = {}
    mtcnn = build_detector("mtcnn")
    found = [(image, mtcnn.detect(image)) for _, image in images]
    for framing in (LEGACY_FRAMING, ADIENCE_FRAMING):
        framed = dataclasses.replace(spec, framing=framing)
        crops = [
            classifier.preprocess(align_face(image, face, framed.face_size, framed.framing))
            for image, faces in found
            for face in faces
        ]
        if not crops:
            print("no face in the photos")
            return
        probs = classifier.predict(classifier.stack(crops))
        ages = [groups[i] for i in probs["age"].argmax(1)]
        genders = [("male", "female")[i] for i in probs["gender"].argmax(1)]
        table[framing.name] = collections.Counter(ages)
        labels[framing.name] = list(zip(ages, genders, strict=True))
    n = len(labels["adience"])
    print(f"original weights on {n} faces (MTCNN), share of faces per age group:")
    print("  framing   " + " ".join(f"{g:>7}" for g in groups))
    for name, counts in table.items():
        print(f"  {name:<9} " + " ".join(f"{counts[g] / n:>7.0%}" for g in groups))
    old, new = labels["legacy"], labels["adience"]
    same_age = sum(a[0] == b[0] for a, b in zip(old, new, strict=True))
    same_gender = sum(a[1] == b[1] for a, b in zip(old, new, strict=True))
    print(f"  same age group {same_age}/{n}, same gender {same_gender}/{n}")
    young = ("0-2", "4-6", "8-12")
    for name, counts in table.items():
        print(f"  {name}: faces called 0-12: {sum(counts[g] for g in young)}/{n}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mean", type=Path, help="the original mean.binaryproto")
    parser.add_argument("--photos", type=Path, nargs="+", default=[SAMPLES])
    parser.add_argument("--calibrate", action="store_true", help="fit the box geometry")
    args = parser.parse_args(argv)
    images = photos(args.photos)
    print(f"photos: {len(images)} from {', '.join(str(p) for p in args.photos)}")
    if args.mean is not None:
        template_section(args.mean, images)
    if args.calibrate:
        calibrate_section(images)
    labels_section(images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
