"""A web demo for people who do not use a terminal: photos in, labelled faces out, and the
audience of a video or camera counted per time window.

    python -m agegender.app [--port 7860] [--host 127.0.0.1] [checkpoint=...] [detector=...]

Tab "Photos": upload one or more photos (or take a webcam snapshot) and see each photo with
its faces boxed and labelled, a table of the faces, and predictions.csv to download (the same
columns as ``predict.py save_probs=true``). Tab "Audience": upload a video or name a camera
index / stream URL, and see the people counted per window (``audience.window``), the chart
and the totals, updated as each window is written; privacy mode on by default. Built with
Gradio, as model demos in this field are; install it with ``pip install -e ".[app]"``.
``key=value`` arguments are ``conf/predict.yaml`` overrides (``detector=opencv_ssd``,
``checkpoint=run.ckpt``, ``precision=fp32``, ``audience.min_frames=5`` ...).

Everything runs through one :class:`agegender.AgeGender` (the Python API): photos through its
pipeline, so a photo gets here exactly the faces, labels and CSV row that ``predict.py``
writes for it (including the ``error: ...`` row of a file that is not a usable image), and
audiences through :meth:`~agegender.AgeGender.predict_folder`, predict.py's job loop itself
(its ``on_window`` and ``stop`` hooks), so the counts are the ones audience.csv holds.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agegender.api import AgeGender
from agegender.errors import handled, translated
from agegender.inference.annotate import draw
from agegender.inference.audience import (
    CSV_NAME,
    JSON_NAME,
    PNG_NAME,
    group_names,
    plot_audience,
)
from agegender.inference.csv_writer import prediction_columns, result_rows
from agegender.inference.inputs import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, InputItem
from agegender.inference.options import OptionError, PredictOptions
from agegender.inference.results import ImageResult
from agegender.inference.summary import Summary
from agegender.runtime.build import configure_torch_threads

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


#: Long side, in pixels, of the gallery's pictures: each photo is resized to it before its
#: labels are drawn, so the labels have the same size on the page whatever the photo's
#: (a 4000 px photo's labels were drawn for 4000 px and shrank to a few pixels on screen).
GALLERY_SIDE = 900


def gallery_image(result: ImageResult) -> np.ndarray:
    """The annotated RGB picture the page shows: ``result``'s image resized to
    :data:`GALLERY_SIDE` and labelled at that size (labels ~20 px high there, ~13 px in the
    page's gallery column)."""
    image = result.image
    height, width = image.shape[:2]
    k = GALLERY_SIDE / max(height, width)
    size = (max(1, round(width * k)), max(1, round(height * k)))
    smaller = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, size, interpolation=smaller)
    # boxes are in full-size pixels: scale = full-size pixels per pixel of the resized image
    view = replace(result, image=resized, scale=result.scale * width / size[0])
    return np.ascontiguousarray(draw(view)[..., ::-1])  # BGR -> RGB


def _prob(value: object) -> object:
    """A probability as the table shows it: 2 decimals (``1.00``, not ``1``); empty stays."""
    return f"{float(value):.2f}" if isinstance(value, (int, float)) else value


#: What each upload field takes, and where the other kind of file goes (wrong_kind).
_KINDS: dict[str, tuple[frozenset[str], str]] = {
    "photo": (VIDEO_EXTENSIONS, "a video: to count the people in it, use the Audience tab"),
    "video": (IMAGE_EXTENSIONS, "a photo: for the age and gender of its faces, use the Photos tab"),
}


def wrong_kind(paths: Sequence[str | os.PathLike[str]], wanted: str) -> str | None:
    """Why an upload went to the wrong field (``wanted``: ``photo`` for the Photos field,
    ``video`` for the Audience's), in words for the page instead of a bare "Error"; None
    when every file fits the field."""
    other, advice = _KINDS[wanted]
    names = [Path(p).name for p in paths if Path(p).suffix.lower() in other]
    if not names:
        return None
    return f"{names[0]} is {advice}. This field takes {wanted}s."


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
                [name, row["face"], row["gender"], _prob(row["gender_prob"]), row["age"],
                 _prob(row["age_prob"]), box, row["status"]]
            )  # fmt: skip
        if result.image is not None:
            n = len(result.faces)
            caption = f"{name}: {n} face{'s' if n != 1 else ''}"
            out.gallery.append((gallery_image(result), caption))
    out.csv_text = buffer.getvalue()
    return out


#: Columns of the audience table on the page (audience.csv has one column per group; here
#: the groups seen are one readable cell).
AUDIENCE_COLUMNS: tuple[str, ...] = (
    "window_start",
    "window_end",
    "people",
    "new_people",
    "groups",
    "dwell_mean_s",
)


@dataclass
class AudienceView:
    """What the Audience tab shows at one moment of a run (:func:`watch_audience`)."""

    #: One row per window written so far (AUDIENCE_COLUMNS).
    table: list[list[object]] = field(default_factory=list)
    #: The chart: a running one while the run goes on, then the run's own audience.png.
    chart: Path | None = None
    #: The totals (Markdown): people counted so far, then audience.json's totals and gates.
    totals: str = ""
    #: Files to download once the run ended (audience.csv, audience.json ...).
    files: list[str] = field(default_factory=list)
    #: True for the last view of a run.
    done: bool = False
    #: audience.json's content once the run ended.
    data: dict[str, Any] | None = None


def audience_row(row: Mapping[str, Any], groups: Sequence[str]) -> list[object]:
    """An audience.csv row as the page's table row (the groups with people, in one cell)."""
    seen = ", ".join(f"{g} {row[g]}" for g in groups if row.get(g))
    return [row["window_start"], row["window_end"], row["people"], row["new_people"], seen,
            row["dwell_mean_s"]]  # fmt: skip


def watch_audience(
    agegender: AgeGender,
    source: str,
    output: str | os.PathLike[str],
    window: float,
    privacy: bool = True,
    stop: threading.Event | None = None,
    **settings: Any,
) -> Iterator[AudienceView]:
    """The Audience tab's one seam: count the audience of ``source`` (a video file, a camera
    index or a stream URL) per ``window`` seconds into ``output`` with predict.py's own job
    loop (:meth:`AgeGender.predict_folder`, ``audience.window``, ``privacy``), yielding a view
    each time a window's row is written and a last one (``done``) with the run's totals,
    audience.png and files. Why a thread: the job loop calls back per window, and a
    generator can only yield from its own frame; the loop runs beside it and hands the rows
    over a queue. Setting ``stop`` (the Stop button) ends the run as Ctrl-C would; a caller
    that stops iterating sets it too, so no run is left behind. Settings the engine refuses
    (a photo with privacy, ...) raise its OptionError here."""
    output = Path(output)
    stop = stop or threading.Event()
    rows: queue.Queue[Mapping[str, Any]] = queue.Queue()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = agegender.predict_folder(
                source, output, audience_window=float(window), privacy=bool(privacy),
                annotate=False, progress=False, on_window=rows.put, stop=stop, **settings,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    groups = group_names(agegender.classifier.labels)
    charts = output.parent / f"{output.name}-charts"
    worker = threading.Thread(target=run, name="agegender-audience", daemon=True)
    worker.start()
    seen: list[Mapping[str, Any]] = []
    try:
        while worker.is_alive() or not rows.empty():
            try:
                seen.append(rows.get(timeout=0.2))
            except queue.Empty:
                continue
            people = sum(int(r["new_people"]) for r in seen)
            totals = {"people": people, "groups": {}}
            chart = _running_chart(charts / f"window-{len(seen)}.png", seen, totals, groups)
            yield AudienceView(
                table=[audience_row(r, groups) for r in seen],
                chart=chart,
                totals=f"**{people} people so far** in {len(seen)} window"
                + ("s" if len(seen) != 1 else "")
                + f" of {float(window):g} s (running)",
            )
        worker.join()
    finally:
        stop.set()  # a caller that went away (a closed page) stops the run
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    summary: Summary = outcome["summary"]
    data = summary.audience or {}
    files = [str(output / name) for name in (CSV_NAME, JSON_NAME)]
    if not privacy:
        files += [str(p) for p in (output / "predictions.csv", output / "tracks.csv")]
    yield AudienceView(
        table=[audience_row(r, groups) for r in data.get("windows", [])],
        chart=output / PNG_NAME if (output / PNG_NAME).is_file() else None,
        totals=audience_totals(data, summary),
        files=[f for f in files if Path(f).is_file()],
        done=True,
        data=data,
    )


def audience_totals(data: Mapping[str, Any], summary: Summary) -> str:
    """The totals under the table (Markdown): unique people by group, and what the quality
    gates removed, so a count can be judged (audience.json's ``totals`` and ``gates``)."""
    if not data:
        return "Nobody counted: no video frame could be read from this source."
    totals = data["totals"]
    windows = len(data["windows"])
    groups = ", ".join(f"{g} {n}" for g, n in totals["groups"].items() if n) or "none"
    tracks = data["gates"]["tracks"]
    frames = data["gates"]["settings"]["min_frames"]
    text = (
        f"**{totals['people']} people** in {windows} window{'s' if windows != 1 else ''} "
        f"of {data['window_seconds']:g} s: {groups}. Quality checks: of {tracks['seen']} "
        f"people followed, {tracks['counted']} were counted; {tracks['min_frames']} were seen "
        f"too briefly (in fewer than {frames} analysed frames) and {tracks['face_gates']} "
        "only with faces too small, too unsure or turned too far away."
    )
    if summary.stream:
        text += f" Stream: {summary.stream['analysed']} frames analysed, ended: "
        text += f"{summary.stream['end']}."
    if data.get("privacy"):
        text += " Privacy mode: only these counts were saved."
    return text


def _running_chart(
    path: Path, rows: Sequence[Mapping[str, Any]], totals: Mapping[str, Any], groups: Sequence[str]
) -> Path | None:
    """audience.png's chart of the windows so far (totals by group only come at the end)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return plot_audience(path, rows, totals, groups)
    except (OSError, ValueError) as exc:  # the table matters more than the chart
        print(f"agegender.app: running chart not drawn: {exc}", file=sys.stderr)
        return None


def _private_root() -> str | None:
    uploads = os.environ.get("GRADIO_TEMP_DIR")
    return str(Path(uploads).parent) if uploads else None


def build_demo(agegender: AgeGender) -> Any:
    """The Gradio page (gr.Blocks) around :func:`analyse`."""
    import gradio as gr

    # inside private_temporaries()' folder when served by main(), removed with it
    downloads = Path(tempfile.mkdtemp(prefix="downloads-", dir=_private_root()))

    def run(files: list[str] | None, snapshot: np.ndarray | None) -> tuple[Any, ...]:
        # a video among the photos: said in words (a warning and the summary line), the
        # photos still analysed; raising would leave bare red "Error" badges on the outputs
        why = wrong_kind(files or [], "photo")
        photos = [f for f in files or [] if Path(f).suffix.lower() not in VIDEO_EXTENSIONS]
        if why:
            gr.Warning(why)
        result = analyse(agegender, photos, snapshot)
        if not result.table:
            return [], None, None, why or "Upload a photo or take a snapshot."
        folder = Path(tempfile.mkdtemp(dir=downloads))
        csv_path = folder / "predictions.csv"
        csv_path.write_text(result.csv_text, encoding="utf-8")
        shown = len({row[0] for row in result.table})
        summary = f"{result.faces} face{'s' if result.faces != 1 else ''} in {shown} photo"
        summary += "s" if shown != 1 else ""
        if why:
            summary += f". {why}"
        return result.gallery, result.table, str(csv_path), summary

    def count(
        video: str | None, stream: str, window: float, privacy: bool, run: dict[str, Any]
    ) -> Iterator[tuple[Any, ...]]:
        source = (stream or "").strip()
        if video and source:
            raise gr.Error("Give a video or a camera / stream, not both.")
        if not video and not source:
            raise gr.Error("Upload a video, or give a camera index (0) or a stream URL.")
        why = wrong_kind([video] if video else [], "video")
        if why:  # said where the totals go, not as bare red "Error" badges
            gr.Warning(why)
            yield [], None, why, None
            return
        if not window or float(window) <= 0:
            raise gr.Error("The window must be a positive number of seconds.")
        stop = run["stop"] = threading.Event()
        output = Path(tempfile.mkdtemp(dir=downloads)) / "audience"
        try:
            for view in watch_audience(
                agegender, video or source, output, float(window), bool(privacy), stop
            ):
                chart = str(view.chart) if view.chart else None
                yield view.table, chart, view.totals, view.files or None
        except (OptionError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        finally:
            run.pop("stop", None)

    def stop_counting(run: dict[str, Any]) -> None:
        event = run.get("stop")
        if event is not None:
            event.set()

    with gr.Blocks(title="agegender: age and gender of faces") as demo:
        with gr.Tab("Photos", id="photos_tab"):
            gr.Markdown(
                "## Age and gender of the faces in your photos\n"
                "Levi & Hassner's CNN (2015) on faces found by MTCNN. Age is one of eight "
                "groups (0-2 ... 60-100); the probability says how sure the network is. "
                "Photos stay on this machine."
            )
            with gr.Row():
                with gr.Column():
                    # both kinds accepted: a video dropped here gets a message, not a bare Error
                    files = gr.File(
                        label="Photos", file_count="multiple", file_types=["image", "video"],
                        elem_id="photos",
                    )  # fmt: skip
                    snapshot = gr.Image(
                        label="Webcam snapshot", sources=["webcam"], type="numpy",
                        elem_id="webcam",
                    )  # fmt: skip
                    button = gr.Button("Predict", variant="primary", elem_id="predict")
                with gr.Column():
                    summary = gr.Markdown(elem_id="summary")
                    # one picture per row: labels drawn at GALLERY_SIDE stay readable (two per
                    # row halved them to ~6 px)
                    gallery = gr.Gallery(
                        label="Faces", elem_id="gallery", columns=1, height=640,
                        object_fit="contain",
                    )  # fmt: skip
            table = gr.Dataframe(
                headers=list(TABLE_COLUMNS), label="Faces", elem_id="faces", interactive=False
            )
            download = gr.File(label="predictions.csv", elem_id="csv")
        with gr.Tab("Audience", id="audience_tab", elem_id="audience_tab"):
            # this browser session's run: where Stop finds its event (a new dict per session)
            session = gr.State(dict)
            gr.Markdown(
                "## Who passed by: people per time window\n"
                "Upload a video, or give a camera or stream, and choose a window length. "
                "Each person is followed from frame to frame and counted once in every window "
                "in which they are seen, by gender and age group. People seen only for a "
                "moment, and faces too small or turned away, are left out (the totals say how "
                "many). A camera or stream is counted until you press Stop. Privacy mode "
                "keeps only the counts: no face, box or picture is saved."
            )
            with gr.Row():
                with gr.Column():
                    # both kinds accepted: a photo dropped here gets a message, not a bare Error
                    video = gr.File(
                        label="Video", file_types=["video", "image"], elem_id="audience_video"
                    )
                    stream = gr.Textbox(
                        label="or a camera index / stream URL",
                        placeholder="0, rtsp://..., http://.../video.mjpg",
                        elem_id="audience_stream",
                    )
                    window = gr.Number(
                        value=60, minimum=0.1, label="Window length (seconds)",
                        elem_id="audience_window",
                    )  # fmt: skip
                    privacy = gr.Checkbox(
                        value=True, label="Privacy: save the counts only",
                        elem_id="audience_privacy",
                    )  # fmt: skip
                    with gr.Row():
                        start = gr.Button("Count", variant="primary", elem_id="audience_start")
                        stop = gr.Button("Stop", elem_id="audience_stop")
                with gr.Column():
                    totals = gr.Markdown(elem_id="audience_totals")
                    chart = gr.Image(
                        label="People per window (chart)", type="filepath",
                        elem_id="audience_chart",
                    )  # fmt: skip
            windows = gr.Dataframe(
                headers=list(AUDIENCE_COLUMNS), label="People per window",
                elem_id="audience_table", interactive=False,
            )  # fmt: skip
            audience_files = gr.File(
                label="Downloads: counts per window (CSV) and totals (JSON)",
                file_count="multiple",
                elem_id="audience_files",
            )  # fmt: skip
        outputs = [gallery, table, download, summary]
        button.click(run, [files, snapshot], outputs)
        files.upload(run, [files, snapshot], outputs)
        snapshot.change(run, [files, snapshot], outputs)
        start.click(
            count,
            [video, stream, window, privacy, session],
            [windows, chart, totals, audience_files],
        )
        # outside the queue: the run it stops holds the queue's one slot
        stop.click(stop_counting, session, None, queue=False)
    demo.queue(default_concurrency_limit=1)  # one request at a time on the CPU
    demo.downloads = downloads
    return demo


def load_agegender(overrides: Sequence[str] = ()) -> AgeGender:
    """The API object for ``conf/predict.yaml`` with ``overrides`` (what predict.py builds)."""
    options = PredictOptions.compose(overrides)
    configure_torch_threads(options.threads, options.workers)
    return AgeGender(options=options.replace(download=True))


@handled("agegender.app")
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
    # SIGTERM (how services and tests stop the demo) as an exit, not a kill: the private
    # folder of uploaded photos is then removed like on Ctrl-C
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with private_temporaries():
        return _serve(args)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


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
    # the settings and the checkpoint are the user's to fix (one line, exit 2); the same
    # builtin errors while serving keep their traceback
    with translated(FileNotFoundError, ValueError):
        agegender = load_agegender(args.overrides)
    demo = build_demo(agegender)
    print(f"agegender.app: {agegender!r} on http://{args.host}:{args.port}", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
