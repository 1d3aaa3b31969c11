"""MTCNN per photo: our cascade driver (``detector=mtcnn``) vs facenet-pytorch's
``detect_face`` (``detector=mtcnn_facenet``), same weights, same options, same images.

Images: the four real photos of ``data/samples`` (one face each) and multi-face pictures.
There are no real group photos offline, so the multi-face pictures are COMPOSITES: face
regions cut from the samples (around the face MTCNN finds in the full sample, 2x its box),
mirrored or not, brightness-jittered, pasted at several sizes (face boxes ~30-200 px) and
positions onto varied backgrounds (gradients, noise, blurred blocks, a sample photo's own
scenery). Ground truth = the sample's MTCNN box mapped through the paste, so recall measures
whether a detector finds each pasted face (IoU >= 0.5), not MTCNN's box convention.

Timing: ``detect()`` per photo (downscale to 640 px included), torch threads ``--threads``
(1: the issue's one-core figure), rounds alternate A/B/B/A on a shared machine; medians.

``--retinaface``: RetinaFace (``detector=retinaface``) against MTCNN (``detector=mtcnn``,
``backend=auto``) as predict.py runs them (onnxruntime sessions sized for 2 loader threads):
recall and false positives on composites of six kinds (``benchmarks/_detector_compare.py``
says how they are made and scored), ms per photo, face counts on real photos (``--photos``),
landmark agreement (mean error / eye distance), the original nets' labels on the two
detectors' alignments of the same faces, RetinaFace's ``max_side`` trade-off, and its input
mean (the original repository's 104, 117, 123 against the wheel's 104, 117, 127).

    python benchmarks/bench_detect.py [--rounds 5] [--composites 12] [--threads 1] [--startup]
    python benchmarks/bench_detect.py --retinaface [--photos data/samples DIR ...] [--per-kind 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from _process import timed  # benchmarks/_process.py (the script's folder is on sys.path)

from agegender.faces import build_detector
from agegender.faces.types import Detector, Face
from agegender.hardware import cpu_summary
from agegender.images import load_image

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
SAMPLE_NAMES = ("astronaut.jpg", "camera.png", "obama.jpg", "biden.jpg")
Box = tuple[float, float, float, float]


def _background(rng: np.random.Generator, h: int, w: int, kind: int, scenery: np.ndarray):
    if kind == 0:  # smooth two-colour gradient
        a, b = rng.integers(0, 256, (2, 3))
        t = np.linspace(0, 1, w)[None, :, None]
        return np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).astype(np.uint8).copy()
    if kind == 1:  # textured noise (hard negatives for P-net)
        noise = rng.normal(128, 50, (h // 4 + 1, w // 4 + 1, 3)).clip(0, 255).astype(np.uint8)
        return cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == 2:  # blurred coloured blocks
        blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        return cv2.GaussianBlur(
            cv2.resize(blocks, (w, h), interpolation=cv2.INTER_NEAREST), (0, 0), 9
        )
    return cv2.resize(scenery, (w, h), interpolation=cv2.INTER_AREA)  # a real photo's scenery


def compose_group_photos(
    n: int, reference: Detector, seed: int = 0, size: tuple[int, int] = (480, 640)
) -> list[tuple[np.ndarray, list[Box]]]:
    """``n`` composite multi-face pictures (H x W x 3 uint8 RGB) with ground-truth boxes."""
    rng = np.random.default_rng(seed)
    sources = []
    for name in SAMPLE_NAMES:
        image = load_image(SAMPLES / name)
        (face,) = reference.detect(image)[:1]
        x1, y1, x2, y2 = face.box
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, 2.0 * max(x2 - x1, y2 - y1)
        cx1, cy1 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        cx2 = int(min(image.shape[1], cx + side / 2))
        cy2 = int(min(image.shape[0], cy + side / 2))
        crop = image[cy1:cy2, cx1:cx2]
        sources.append((crop, (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1), x2 - x1))
    h, w = size
    out = []
    for i in range(n):
        canvas = _background(rng, h, w, i % 4, load_image(SAMPLES / SAMPLE_NAMES[i % 4]))
        taken: list[tuple[int, int, int, int]] = []
        truth: list[Box] = []
        for _ in range(int(rng.integers(3, 7))):
            crop, (bx1, by1, bx2, by2), face_w = sources[int(rng.integers(len(sources)))]
            target = float(rng.choice([30, 42, 56, 75, 100, 140, 200]))  # face box width, px
            scale = target / face_w
            ch, cw = round(crop.shape[0] * scale), round(crop.shape[1] * scale)
            if ch >= h or cw >= w:
                continue
            for _try in range(20):
                px, py = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
                if all(
                    px + cw <= a or a + c <= px or py + ch <= b or b + d <= py
                    for a, b, c, d in taken
                ):
                    break
            else:
                continue
            patch = cv2.resize(crop, (cw, ch), interpolation=cv2.INTER_AREA)
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
                bx1, bx2 = crop.shape[1] - bx2, crop.shape[1] - bx1
            gain = rng.uniform(0.7, 1.2)
            canvas[py : py + ch, px : px + cw] = (patch * gain).clip(0, 255).astype(np.uint8)
            taken.append((px, py, cw, ch))
            truth.append((px + bx1 * scale, py + by1 * scale, px + bx2 * scale, py + by2 * scale))
        out.append((canvas, truth))
    return out


def iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def recall(found: list[list[Face]], truths: list[list[Box]]) -> tuple[int, int]:
    """(ground-truth faces matched by a detection at IoU >= 0.5, all ground-truth faces)."""
    hits = sum(
        any(iou(t, f.box) >= 0.5 for f in faces)
        for faces, boxes in zip(found, truths, strict=True)
        for t in boxes
    )
    return hits, sum(len(b) for b in truths)


def agreement(ours: list[list[Face]], ref: list[list[Face]]) -> tuple[int, int, float, float]:
    """(faces in both at IoU >= 0.9, faces in only one, max |box diff| px, max |landmark| px)."""
    both = only = 0
    box_diff = mark_diff = 0.0
    for a_faces, b_faces in zip(ours, ref, strict=True):
        unmatched = list(b_faces)
        for a in a_faces:
            best = max(unmatched, key=lambda b, a=a: iou(a.box, b.box), default=None)
            if best is None or iou(a.box, best.box) < 0.9:
                only += 1
                continue
            unmatched.remove(best)
            both += 1
            box_diff = max(box_diff, float(np.abs(np.subtract(a.box, best.box)).max()))
            mark_diff = max(mark_diff, float(np.abs(a.landmarks - best.landmarks).max()))
        only += len(unmatched)
    return both, only, box_diff, mark_diff


def per_photo_ms(detector: Detector, images: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for image in images:
        detector.detect(image)
    return (time.perf_counter() - start) / len(images) * 1000


def startup(code: str) -> tuple[float, int]:
    """(seconds, peak RSS MB) of a fresh ``python -c code`` (GNU time)."""
    seconds, mb = timed([sys.executable, "-c", code])
    return seconds, int(mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--composites", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--startup", action="store_true", help="also time cold imports")
    parser.add_argument("--retinaface", action="store_true", help="RetinaFace against MTCNN")
    parser.add_argument("--photos", type=Path, nargs="+", default=[SAMPLES])
    parser.add_argument("--per-kind", type=int, default=6, help="composites of each kind")
    parser.add_argument(
        "--backend",
        choices=("torch", "onnxruntime"),
        default="torch",
        help="where our driver's three nets run (onnxruntime: the exported nets, 1 thread)",
    )
    args = parser.parse_args()
    if args.retinaface:
        retinaface_section(args)
        return
    torch.set_num_threads(args.threads)
    print(cpu_summary())
    print(f"torch {torch.__version__}, {args.threads} torch thread(s)")

    ours, ref = build_detector("mtcnn", backend=args.backend), build_detector("mtcnn_facenet")
    print(f"ours: {ours!r}")
    samples = [load_image(SAMPLES / name) for name in SAMPLE_NAMES]
    composites = compose_group_photos(args.composites, ref)
    groups = [image for image, _ in composites]

    for label, images in (("samples (real, 1 face)", samples), ("composites", groups)):
        per_photo_ms(ours, images), per_photo_ms(ref, images)  # warm-up
        a_times, b_times = [], []
        for r in range(args.rounds):
            pair = [(ours, a_times), (ref, b_times)]
            for detector, times in pair if r % 2 == 0 else pair[::-1]:
                times.append(per_photo_ms(detector, images))
        a, b = statistics.median(a_times), statistics.median(b_times)
        print(
            f"{label:24s} {len(images):3d} images: ours {a:6.1f} ms/photo, facenet {b:6.1f} "
            f"ms/photo, facenet/ours {b / a:4.2f}x"
        )

    found_ours = [ours.detect(image) for image in groups]
    found_ref = [ref.detect(image) for image in groups]
    truths = [t for _, t in composites]
    (ha, n), (hb, _) = recall(found_ours, truths), recall(found_ref, truths)
    print(f"composite recall (IoU >= 0.5): ours {ha}/{n}, facenet {hb}/{n}")
    both, only, box_diff, mark_diff = agreement(
        found_ours + [ours.detect(i) for i in samples], found_ref + [ref.detect(i) for i in samples]
    )
    print(
        f"ours vs facenet (composites + samples): {both} faces in both, {only} in one only, "
        f"max |box diff| {box_diff:.2g} px, max |landmark diff| {mark_diff:.2g} px"
    )

    if args.startup:
        build = "from agegender.faces import build_detector; build_detector('{}')"
        for name in ("mtcnn", "mtcnn_facenet"):
            seconds, mb = startup(build.format(name))
            print(f"cold import + build {name:14s} {seconds:.2f} s, {mb} MB peak RSS")
        seconds, mb = startup("import torch, cv2, numpy")
        print(f"cold import torch + cv2 + numpy        {seconds:.2f} s, {mb} MB peak RSS")


def retinaface_section(args: argparse.Namespace) -> None:
    import _detector_compare as dc
    import onnxruntime

    from agegender import AgeGender
    from agegender.faces import retinaface
    from agegender.faces.align import align_face

    print(cpu_summary())
    print(f"onnxruntime {onnxruntime.__version__}; detectors as predict.py builds them")
    mtcnn = build_detector("mtcnn", backend="auto")
    retina = build_detector("retinaface")
    print(f"A: {mtcnn!r}\nB: {retina!r}")
    real = dc.photos(args.photos)
    sources = dc.face_sources([image for _, image in real], mtcnn)
    scenery = [image for _, image in real]
    print(f"{len(real)} real photos; composites from {len(sources)} of their faces")

    print("\ncomposites: faces found / faces (false positives), ms per photo")
    print(
        f"  {'kind':10s} {'pics':>4s} {'MTCNN':>18s} {'RetinaFace':>18s}"
        f" {'MTCNN ms':>9s} {'RF ms':>7s}"
    )
    pictures: dict[str, list] = {}
    totals = {"A": [0, 0, 0], "B": [0, 0, 0]}
    for kind in dc.KINDS:
        made = dc.composites(kind, args.per_kind, sources, scenery)
        pictures[kind] = made
        images, truths = [image for image, _ in made], [t for _, t in made]
        cells = []
        for key, detector in (("A", mtcnn), ("B", retina)):
            hits, n, false = dc.score([detector.detect(image) for image in images], truths)
            totals[key] = [a + b for a, b in zip(totals[key], (hits, n, false), strict=True)]
            cells.append(f"{hits:3d}/{n:<3d} ({false:2d}) {hits / max(n, 1):5.0%}")
        ms = dc.ms_per_photo({"A": mtcnn, "B": retina}, images, args.rounds)
        print(
            f"  {kind:10s} {len(images):4d} {cells[0]:>18s} {cells[1]:>18s}"
            f" {ms['A']:9.1f} {ms['B']:7.1f}"
        )
    for key, name in (("A", "MTCNN"), ("B", "RetinaFace")):
        hits, n, false = totals[key]
        print(f"  all kinds  {name:10s} {hits}/{n} found ({hits / n:.0%}), {false} false positives")

    print("\nreal photos: faces found (no ground truth: counts), ms per photo")
    found_real = {}
    for name, image in real:
        a, b = mtcnn.detect(image), retina.detect(image)
        found_real[name] = (image, a, b)
        both = len(dc.pairs(b, a))
        print(f"  {name:28s} MTCNN {len(a):2d}  RetinaFace {len(b):2d}  same faces {both:2d}")
    ms = dc.ms_per_photo({"A": mtcnn, "B": retina}, scenery, args.rounds)
    print(
        f"  ms per photo: MTCNN {ms['A']:.1f}, RetinaFace {ms['B']:.1f} "
        f"(MTCNN/RF {ms['A'] / ms['B']:.2f}x)"
    )

    print("\nRetinaFace max_side: recall on all composites, false positives, ms per photo")
    every = [pic for kind in dc.KINDS for pic in pictures[kind]]
    every_images, every_truths = [image for image, _ in every], [t for _, t in every]
    sides = {
        str(side): build_detector("retinaface", max_side=side) for side in (320, 640, 960, None)
    }
    speed = dc.ms_per_photo(sides, every_images + scenery, max(1, args.rounds // 2))
    full_mtcnn = build_detector("mtcnn", backend="auto", max_side=None)
    hits, n, false = dc.score([full_mtcnn.detect(i) for i in every_images], every_truths)
    ms = dc.ms_per_photo({"A": full_mtcnn}, every_images + scenery, max(1, args.rounds // 2))
    print(f"  (MTCNN max_side=None: {hits}/{n} ({hits / n:.0%}), {false} false, {ms['A']:.1f} ms)")
    for label, detector in sides.items():
        hits, n, false = dc.score([detector.detect(i) for i in every_images], every_truths)
        print(
            f"  max_side={label:5s} {hits}/{n} ({hits / n:.0%}), {false} false, "
            f"{speed[label]:.1f} ms"
        )

    print("\nlandmarks and labels on faces both find")
    matched = []
    for image, a, b in found_real.values():
        matched += [(image, fb, fa) for fb, fa in dc.pairs(b, a)]
    for kind in dc.KINDS:
        for image, _ in pictures[kind]:
            matched += [
                (image, fb, fa) for fb, fa in dc.pairs(retina.detect(image), mtcnn.detect(image))
            ]
    errors = [dc.landmark_error(fb, fa) for _, fb, fa in matched]
    print(
        f"  {len(errors)} faces: landmark error / MTCNN's eye distance mean {np.mean(errors):.3f}, "
        f"median {np.median(errors):.3f}, 90th percentile {np.percentile(errors, 90):.3f}"
    )
    model = AgeGender(backend="onnxruntime")
    classifier, spec = model.classifier, model.classifier.face_spec
    ages, genders = classifier.labels.class_names["age"], classifier.labels.class_names["gender"]

    def labels(faces: list[tuple[np.ndarray, Face]]) -> list[tuple[str, str]]:
        crops = [classifier.preprocess(align_face(image, face, spec.face_size, spec.framing))
                 for image, face in faces]  # fmt: skip
        probs = classifier.predict(classifier.stack(crops))
        return [
            (ages[a], genders[g])
            for a, g in zip(probs["age"].argmax(1), probs["gender"].argmax(1), strict=True)
        ]

    for label, subset in (
        (
            "real photos",
            [m for m in matched if any(m[0] is im for im, _, _ in found_real.values())],
        ),
        ("faces >= 40 px", [m for m in matched if m[2].width >= 40]),
    ):
        same_age, same_gender, n = dc.label_agreement(subset, labels)
        if n:
            print(
                f"  labels, {label}: same age group {same_age}/{n} ({same_age / n:.0%}), "
                f"same gender {same_gender}/{n} ({same_gender / n:.0%})"
            )
        # the yardstick: MTCNN against itself on the mirror image (the nets' own stability)
        same_age, same_gender, n = dc.label_agreement(dc.mirror_pairs(subset, mtcnn), labels)
        if n:
            print(
                f"    MTCNN vs MTCNN on the mirror image, same faces: same age group "
                f"{same_age}/{n} ({same_age / n:.0%}), same gender {same_gender}/{n} "
                f"({same_gender / n:.0%})"
            )

    print("\ninput mean (red channel): best-face score on the real photos")
    for red in (123.0, 127.0):
        retinaface.RETINAFACE_MEAN_BGR = np.array([104.0, 117.0, red], dtype=np.float32)
        scores = [faces[0].score for faces in (retina.detect(image) for image in scenery) if faces]
        print(
            f"  104, 117, {red:g}: {len(scores)} photos with a face, "
            f"mean best score {np.mean(scores):.5f}"
        )
    retinaface.RETINAFACE_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)


if __name__ == "__main__":
    main()
