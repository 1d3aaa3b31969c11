"""A web demo for people who do not use a terminal: photos in, labelled faces out.

    python -m agegender.app [--port 7860] [--host 127.0.0.1] [checkpoint=...] [detector=...]

Upload one or more photos (or take a webcam snapshot) and see each photo with its faces boxed
and labelled, a table of the faces, and predictions.csv to download (the same columns as
``predict.py save_probs=true``). Built with Gradio, as model demos in this field are; install
it with ``pip install -e ".[app]"``. ``key=value`` arguments are ``conf/predict.yaml``
overrides (``detector=opencv_ssd``, ``checkpoint=run.ckpt``, ``precision=fp32`` ...).

Everything runs through one :class:`agegender.AgeGender` (the Python API) and its pipeline,
so a photo gets here exactly the faces, labels and CSV row that ``predict.py`` writes for it,
including the ``error: ...`` row of a file that is not a usable image.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agegender.api import AgeGender
from agegender.config import CONF_DIR
from agegender.errors import CheckpointError
from agegender.inference.annotate import draw
from agegender.inference.csv_writer import prediction_columns, result_rows
from agegender.inference.inputs import InputItem
from agegender.runtime.build import configure_torch_threads
from agegender.store import WeightsNotFoundError

#: Columns of the table on the page (the CSV to download has predict.py's columns).
TABLE_COLUMNS: tuple[str, ...] = (
    "photo",
    "face",
    "gender",
    "gender_prob",
    "age",
    "age_prob",
    "box",
    "status",
)


@dataclass
class Analysis:
    """What the page shows for one request."""

    #: (annotated RGB image, caption) per photo that could be decoded.
    gallery: list[tuple[np.ndarray, str]] = field(default_factory=list)
    #: One row per face, or per photo without a face / with an error (TABLE_COLUMNS).
    table: list[list[object]] = field(default_factory=list)
    #: predictions.csv text (predict.py's columns, with probabilities).
    csv_text: str = ""

    @property
    def faces(self) -> int:
        return sum(1 for row in self.table if row[-1] == "ok")


def analyse(
    agegender: AgeGender,
    files: Sequence[str | os.PathLike[str]] = (),
    snapshot: np.ndarray | None = None,
) -> Analysis:
    """The demo's one seam: photos (uploaded files, decoded like predict.py's inputs) and a
    webcam snapshot (H x W x 3 RGB) -> annotated images, table rows and the CSV."""
    items = [InputItem(Path(f).name, Path(f).name, file=Path(f)) for f in files]
    if snapshot is not None:
        rgb = np.ascontiguousarray(snapshot[..., :3]).astype(np.uint8, copy=False)
        items.append(InputItem("webcam.png", "webcam.png", image=rgb))
    out = Analysis()
    buffer = io.StringIO()
    labels = agegender.classifier.labels  # the label set predict.py would write
    writer = csv.DictWriter(buffer, fieldnames=prediction_columns(True, labels))
    writer.writeheader()
    if not items:
        out.csv_text = buffer.getvalue()
        return out
    for result in agegender.pipeline(keep_images=True).run(items):
        rows = result_rows(result, save_probs=True, labels=labels)
        writer.writerows(rows)
        name = result.item.path
        for row in rows:
            box = ""
            if row["status"] == "ok":
                box = f"{row['x1']}, {row['y1']}, {row['x2']}, {row['y2']}"
            out.table.append(
                [name, row["face"], row["gender"], row["gender_prob"], row["age"],
                 row["age_prob"], box, row["status"]]
            )  # fmt: skip
        if result.image is not None:
            annotated = draw(result)[..., ::-1]  # BGR -> RGB
            n = len(result.faces)
            caption = f"{name}: {n} face{'s' if n != 1 else ''}"
            out.gallery.append((np.ascontiguousarray(annotated), caption))
    out.csv_text = buffer.getvalue()
    return out


def _private_root() -> str | None:
    uploads = os.environ.get("GRADIO_TEMP_DIR")
    return str(Path(uploads).parent) if uploads else None


def build_demo(agegender: AgeGender) -> Any:
    """The Gradio page (gr.Blocks) around :func:`analyse`."""
    import gradio as gr

    # inside private_temporaries()' folder when served by main(), removed with it
    downloads = Path(tempfile.mkdtemp(prefix="downloads-", dir=_private_root()))

    def run(files: list[str] | None, snapshot: np.ndarray | None) -> tuple[Any, ...]:
        result = analyse(agegender, files or [], snapshot)
        if not result.table:
            return [], None, None, "Upload a photo or take a snapshot."
        folder = Path(tempfile.mkdtemp(dir=downloads))
        csv_path = folder / "predictions.csv"
        csv_path.write_text(result.csv_text, encoding="utf-8")
        photos = len({row[0] for row in result.table})
        summary = f"{result.faces} face{'s' if result.faces != 1 else ''} in {photos} photo"
        summary += "s" if photos != 1 else ""
        return result.gallery, result.table, str(csv_path), summary

    with gr.Blocks(title="agegender: age and gender of faces") as demo:
        gr.Markdown(
            "## Age and gender of the faces in your photos\n"
            "Levi & Hassner's CNN (2015) on faces found by MTCNN. Age is one of eight groups "
            "(0-2 ... 60-100); the probability says how sure the network is. Photos stay on "
            "this machine."
        )
        with gr.Row():
            with gr.Column():
                files = gr.File(
                    label="Photos", file_count="multiple", file_types=["image"], elem_id="photos"
                )
                snapshot = gr.Image(
                    label="Webcam snapshot", sources=["webcam"], type="numpy", elem_id="webcam"
                )
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column():
                summary = gr.Markdown(elem_id="summary")
                gallery = gr.Gallery(
                    label="Faces", elem_id="gallery", columns=2, height=560, object_fit="contain"
                )
        table = gr.Dataframe(
            headers=list(TABLE_COLUMNS), label="Faces", elem_id="faces", interactive=False
        )
        download = gr.File(label="predictions.csv", elem_id="csv")
        outputs = [gallery, table, download, summary]
        button.click(run, [files, snapshot], outputs)
        files.upload(run, [files, snapshot], outputs)
        snapshot.change(run, [files, snapshot], outputs)
    demo.queue(default_concurrency_limit=1)  # one request at a time on the CPU
    demo.downloads = downloads
    return demo


def load_agegender(overrides: Sequence[str] = ()) -> AgeGender:
    """The API object for ``conf/predict.yaml`` with ``overrides`` (what predict.py builds)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("predict", overrides=["input=app", "output=app", *overrides])
    config = OmegaConf.to_container(cfg, resolve=True)
    configure_torch_threads(config.get("threads"), int(config["workers"]))
    return AgeGender.from_config(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agegender.app",
        description="Web demo: upload photos, see age and gender of every face.",
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve the network")
    parser.add_argument("overrides", nargs="*", help="conf/predict.yaml overrides: key=value")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides are key=value (got {' '.join(bad)})")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    with private_temporaries():
        return _serve(args)


@contextlib.contextmanager
def private_temporaries() -> Iterator[Path]:
    """Uploads (Gradio's temporary folder) and the CSVs offered for download live in one
    private folder for the server's lifetime, removed when it stops: photos of people are
    not left behind in the system's temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="agegender-app-"))
    before = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "uploads")
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = before
        shutil.rmtree(folder, ignore_errors=True)


def _serve(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(
            "agegender.app needs Gradio: pip install -e '.[app]' (or pip install gradio)",
            file=sys.stderr,
        )
        return 2
    try:
        agegender = load_agegender(args.overrides)
    except (WeightsNotFoundError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"agegender.app: {exc}", file=sys.stderr)
        return 2
    demo = build_demo(agegender)
    print(f"agegender.app: {agegender!r} on http://{args.host}:{args.port}", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
