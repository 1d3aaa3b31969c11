"""Audience counts (audience.window): people per window and in total, the quality gates and
their report, privacy mode (every file written listed), blurred copies, live per-window lines
on a local MJPEG stream, and audience.csv's documented columns."""

from __future__ import annotations

import csv
import json
import re
import threading
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from video_fixtures import SAMPLES, MJPEGServer, zoom_frames

from agegender.data.demo import write_video
from agegender.images import load_image
from agegender.inference import predict
from agegender.inference.annotate import blur_faces
from agegender.inference.audience import (
    FACE_GATES,
    AudienceCounter,
    audience_columns,
    yaw_degrees,
)
from agegender.inference.inputs import InputItem
from agegender.inference.options import OptionError, PredictOptions
from agegender.inference.results import FaceResult, ImageResult
from agegender.labels import ADIENCE8, AGE_BUCKETS

REPO = Path(__file__).resolve().parents[1]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _face(age: int, gender: int, side: float = 60.0, score: float = 0.99) -> FaceResult:
    """A face whose probabilities put 0.9 on one age class and one gender."""
    ages = np.full(8, 0.1 / 7)
    ages[age] = 0.9
    genders = np.array([0.1, 0.1])
    genders[gender] = 0.9
    names = ADIENCE8.class_names
    return FaceResult(
        box=(10.0, 10.0, 10.0 + side, 10.0 + side),
        score=score,
        landmarks=[(30.0, 30.0), (50.0, 30.0), (40.0, 40.0), (32.0, 55.0), (48.0, 55.0)],
        age_probs=dict(zip(names["age"], ages, strict=True)),
        gender_probs=dict(zip(names["gender"], genders, strict=True)),
    )


def _frame(video: str, index: int, faces: list[tuple[int | None, FaceResult]]) -> ImageResult:
    item = InputItem(f"{video}#frame={index}", "v", video=video, frame=index)
    return ImageResult(item, faces=[f for _, f in faces], tracks=[t for t, _ in faces])


def _counter(tmp_path: Path, window: float = 1.0, **gates: float) -> AudienceCounter:
    options = PredictOptions.defaults().replace(audience_window=window, **gates).audience
    return AudienceCounter(
        options, ADIENCE8, tmp_path, fps=lambda video: 10.0, stride=1, lost_seconds=0.3,
        report=lambda line: None,
    )  # fmt: skip


def test_stayer_counted_once_per_window_and_once_in_totals(tmp_path) -> None:
    """Exact counting on given tracks: A stays 3 s (3 windows of 1 s), B is seen in two
    frames (min_frames=3: not a person), C comes in the second window and leaves."""
    counter = _counter(tmp_path, window=1.0, audience_min_frames=3)
    for i in range(30):  # 10 fps, every frame analysed
        faces: list[tuple[int | None, FaceResult]] = [(1, _face(4, 1))]  # A: female 25-32
        if i in (3, 4):
            faces.append((2, _face(0, 0)))  # B: a glimpse
        if 12 <= i < 18:
            faces.append((3, _face(6, 0)))  # C: male 48-53
        counter.observe(_frame("shop.mp4", i, faces))
    data = counter.close()
    rows = _csv(tmp_path / "audience.csv")
    assert [(r["window_start"], r["window_end"]) for r in rows] == [
        ("0.0", "1.0"), ("1.0", "2.0"), ("2.0", "3.0"),
    ]  # fmt: skip
    assert [int(r["people"]) for r in rows] == [1, 2, 1]
    assert [int(r["new_people"]) for r in rows] == [1, 1, 0]
    assert [int(r["female_25-32"]) for r in rows] == [1, 1, 1]
    assert [int(r["male_48-53"]) for r in rows] == [0, 1, 0]
    assert [int(r["male_0-2"]) for r in rows] == [0, 0, 0]
    # dwell within the window: A 0.9 s each time, C 1.2..1.7 = 0.5 s
    assert [float(r["dwell_mean_s"]) for r in rows] == [0.9, 0.7, 0.9]
    totals = data["totals"]
    assert totals["people"] == 2
    assert {g: n for g, n in totals["groups"].items() if n} == {"female_25-32": 1, "male_48-53": 1}
    assert totals["dwell_mean_s"] == pytest.approx((2.9 + 0.5) / 2, abs=0.01)
    tracks = data["gates"]["tracks"]
    assert tracks == {"seen": 3, "counted": 2, "min_frames": 1, "face_gates": 0}
    assert json.loads((tmp_path / "audience.json").read_text())["windows"] == data["windows"]
    assert (tmp_path / "audience.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stream_person_ends_after_lost_seconds_of_its_clock(tmp_path) -> None:
    """A stream analysed every 0.5 s (a 10 fps camera, video.stride=1, the model keeping
    up with one frame in 5): a glimpse (2 frames, min_frames=3) keeps the first window's
    row waiting only until it has been missing lost_seconds=1 of the stamps (written at the
    frame stamped 2.5), not lost_seconds x 10 analysed frames (until 6.0)."""
    options = PredictOptions.defaults().replace(audience_window=2.0, audience_min_frames=3)
    counter = AudienceCounter(
        options.audience, ADIENCE8, tmp_path, fps=lambda video: 10.0, stride=1,
        lost_seconds=1.0, live=True, report=lambda line: None,
    )  # fmt: skip
    start = 1_700_000_000.0  # a multiple of the window: windows [start, start + 2) ...
    written = {}
    for i in range(8):  # stamps 0.0, 0.5, ..., 3.5 s after start
        item = InputItem(f"cam#frame={5 * i}", "cam", video="cam", frame=5 * i,
                         stamp=start + 0.5 * i)  # fmt: skip
        faces = [_face(4, 1)] if i < 2 else []
        counter.observe(ImageResult(item, faces=faces, tracks=[1] * len(faces)))
        written[0.5 * i] = len(counter.rows)
    assert written == {0.0: 0, 0.5: 0, 1.0: 0, 1.5: 0, 2.0: 0, 2.5: 1, 3.0: 1, 3.5: 1}
    assert counter.rows[0]["people"] == 0  # a glimpse is nobody


def test_face_gates_keep_faces_out_of_the_average_and_are_reported(tmp_path) -> None:
    """Small, unsure and turned faces do not enter a track's average; a track left with
    fewer than min_frames good faces is removed by the face gates."""
    counter = _counter(
        tmp_path, window=10.0, audience_min_frames=3, audience_min_face=32,
        audience_min_score=0.95, audience_max_yaw=45,
    )  # fmt: skip
    turned = _face(2, 1)
    turned.landmarks = [(30.0, 30.0), (50.0, 30.0), (55.0, 40.0), (32.0, 55.0), (48.0, 55.0)]
    for i in range(10):
        faces: list[tuple[int | None, FaceResult]] = [(1, _face(4, 1) if i < 5 else turned)]
        faces.append((2, _face(1, 0, side=20.0) if i % 2 else _face(1, 0, score=0.5)))
        faces.append((None, _face(3, 0)))  # never tracked
        counter.observe(_frame("v.mp4", i, faces))
    data = counter.close()
    gates = data["gates"]
    assert gates["faces"] == {
        "seen": 30, "min_face": 5, "min_score": 5, "max_yaw": 5, "untracked": 10, "used": 5,
    }  # fmt: skip
    assert gates["tracks"] == {"seen": 2, "counted": 1, "min_frames": 0, "face_gates": 1}
    # track 1's answer comes from its five frontal faces only (female 25-32, not 8-12)
    assert {g: n for g, n in data["totals"]["groups"].items() if n} == {"female_25-32": 1}


def test_yaw_from_landmarks() -> None:
    eyes = [(30.0, 30.0), (50.0, 30.0)]
    mouth = [(32.0, 55.0), (48.0, 55.0)]
    assert yaw_degrees([*eyes, (40.0, 42.0), *mouth]) == pytest.approx(0.0)
    # nose 10 px off the middle of eyes 20 px apart: atan(2 * 10 / 20) = 45 degrees
    assert yaw_degrees([*eyes, (50.0, 42.0), *mouth]) == pytest.approx(45.0)
    assert yaw_degrees([*eyes, (30.0, 42.0), *mouth]) == pytest.approx(45.0)
    # rolled 90 degrees (eyes one above the other): measured along the eye line
    assert yaw_degrees([(30, 30), (30, 50), (25, 40), (10, 32), (10, 48)]) == pytest.approx(
        np.degrees(np.arctan(0.0))
    )
    assert yaw_degrees(None) is None


def test_video_person_across_three_windows(tmp_path, mtcnn, random_classifier) -> None:
    """The engine end to end: one person for 4.5 s in windows of 1.5 s."""
    video = write_video(tmp_path / "in" / "stay.mp4", zoom_frames("biden.jpg", 45), fps=10)
    out = tmp_path / "out"
    summary = predict(
        video, out, mtcnn, random_classifier, video_stride=3, progress=False, annotate=False,
        audience_window=1.5,
    )  # fmt: skip
    rows = _csv(out / "audience.csv")
    assert [(r["window_start"], r["window_end"]) for r in rows] == [
        ("0.0", "1.5"), ("1.5", "3.0"), ("3.0", "4.5"),
    ]  # fmt: skip
    assert [int(r["people"]) for r in rows] == [1, 1, 1]
    assert [int(r["new_people"]) for r in rows] == [1, 0, 0]
    groups = [c for c in audience_columns(ADIENCE8) if "_" in c and c[0] in "mf"]
    assert [sum(int(r[g]) for g in groups) for r in rows] == [1, 1, 1]
    assert summary.audience["totals"]["people"] == 1
    assert sum(summary.audience["totals"]["groups"].values()) == 1
    assert summary.audience["gates"]["faces"]["seen"] == 15
    # the per-face outputs are still written without privacy
    assert (out / "predictions.csv").is_file() and (out / "tracks.csv").is_file()


def test_glimpse_is_not_counted_and_the_report_says_so(
    tmp_path, mtcnn, random_classifier, capsys
) -> None:
    """A face seen in two analysed frames (min_frames=3) is no person; the next one is."""
    glimpse = zoom_frames("obama.jpg", 2, zoom=1.0)
    stayer = zoom_frames("biden.jpg", 10, zoom=1.2)
    blank = [np.full_like(glimpse[0], 40)] * 15
    video = write_video(tmp_path / "in" / "g.mp4", glimpse + blank + stayer, fps=10)
    summary = predict(
        video, tmp_path / "out", mtcnn, random_classifier, video_stride=1, progress=False,
        annotate=False, audience_window=10, audience_min_frames=3,
    )  # fmt: skip
    data = summary.audience
    assert data["totals"]["people"] == 1
    assert data["gates"]["tracks"] == {"seen": 2, "counted": 1, "min_frames": 1, "face_gates": 0}
    assert [int(r["people"]) for r in data["windows"]] == [1]
    out = capsys.readouterr().out
    assert "audience totals: 1 people in 1 window of 10 s" in out
    assert "tracks 2 seen, 1 counted, removed min_frames 1, face gates 0" in out


def test_privacy_writes_only_aggregates(tmp_path, mtcnn, random_classifier) -> None:
    video = write_video(tmp_path / "in" / "p.mp4", zoom_frames("obama.jpg", 30), fps=10)
    out = tmp_path / "out"
    summary = predict(
        video, out, mtcnn, random_classifier, video_stride=3, progress=False,
        audience_window=1.0, privacy=True,  # annotate stays true: privacy overrides it
    )  # fmt: skip
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert written == ["audience.csv", "audience.json", "audience.png"]
    assert summary.audience["totals"]["people"] == 1 and summary.faces == 10
    header = (out / "audience.csv").read_text().splitlines()[0].split(",")
    assert header == list(audience_columns(ADIENCE8))
    assert not {"x1", "y1", "box", "path", "track", "landmarks"} & set(header)
    text = (out / "audience.json").read_text()
    for word in ('"box"', '"landmarks"', '"track"', '"x1"', "#frame="):
        assert word not in text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"privacy": True}, "set audience.window"),
        ({"audience_window": 60, "resume": True}, "cannot be resumed"),
        ({"audience_window": 60, "num_shards": 2}, "num_shards=1"),
        ({"audience_window": 60, "privacy": True, "blur_faces": True}, "choose one"),
        ({"blur_faces": True, "annotate": False}, "annotate=false writes none"),
        ({"audience_window": 60, "privacy": True, "save_probs": True}, "no per-face rows"),
    ],
)
def test_settings_that_cannot_work_are_refused(tmp_path, settings, message) -> None:
    """Refused by the source before any model work (detector and network unused)."""
    video = write_video(tmp_path / "v.mp4", zoom_frames("obama.jpg", 2), fps=10)
    with pytest.raises(OptionError, match=message):
        predict(video, tmp_path / "out", None, None, **settings)
    with pytest.raises(OptionError, match=message):  # a stream too
        predict("rtsp://127.0.0.1:9/x", tmp_path / "out", None, None, **settings)
    assert not (tmp_path / "out").exists()


def test_photos_only_with_audience_and_privacy_with_photos_are_refused(tmp_path) -> None:
    with pytest.raises(OptionError, match="has no video"):
        predict(SAMPLES, tmp_path / "a", None, None, audience_window=60)
    folder = tmp_path / "mixed"
    write_video(folder / "v.mp4", zoom_frames("obama.jpg", 2), fps=10)
    (folder / "p.jpg").write_bytes((SAMPLES / "obama.jpg").read_bytes())
    with pytest.raises(OptionError, match="1 non-video file"):
        predict(folder, tmp_path / "b", None, None, audience_window=60, privacy=True)


def test_blur_hides_the_face_and_draws_no_label() -> None:
    image = cv2.cvtColor(load_image(SAMPLES / "obama.jpg"), cv2.COLOR_RGB2BGR)
    height, width = image.shape[:2]
    box = (width * 0.35, height * 0.1, width * 0.65, height * 0.5)
    blurred = blur_faces(image.copy(), [box])
    x1, y1, x2, y2 = (int(v) for v in box)

    def detail(a: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(a, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())

    assert detail(blurred[y1:y2, x1:x2]) < detail(image[y1:y2, x1:x2]) / 20
    # far from the grown box nothing changed
    assert np.array_equal(blurred[-20:, :20], image[-20:, :20])


def test_live_stream_prints_each_window_and_the_totals(
    tmp_path, mtcnn, random_classifier, capsys
) -> None:
    frames = zoom_frames("biden.jpg", 30, size=(160, 200))
    with MJPEGServer(frames, fps=15) as server:
        summary = predict(
            server.url("/live.mjpg"), tmp_path, mtcnn, random_classifier, video_stride=1,
            video_stall_seconds=5, progress=False, annotate=False, audience_window=0.5,
            audience_min_frames=2,
        )  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if "audience" in line]
    rows = summary.audience["windows"]
    assert len(rows) >= 2
    assert len(lines) == len(rows) + 2  # one per window, then the totals and the gates
    assert all(line.startswith("audience ") for line in lines[: len(rows)])
    assert lines[-2].startswith("audience totals: 1 people in")
    assert lines[-1].startswith("  audience gates:")
    for row in rows:  # ISO 8601 wall clock, windows of 0.5 s
        start = datetime.fromisoformat(row["window_start"])
        end = datetime.fromisoformat(row["window_end"])
        assert start.tzinfo is not None and row["people"] in (0, 1)
        assert (end - start).total_seconds() == 0.5
    assert sum(r["new_people"] for r in rows) == 1
    assert [r["video"] for r in rows] == [server.url("/live.mjpg")] * len(rows)


def test_audience_columns_are_documented() -> None:
    doc = (REPO / "docs" / "contracts.md").read_text()
    match = re.search(r"^## audience\.csv\n(.*?)(?=^## |\Z)", doc, re.S | re.M)
    assert match, "docs/contracts.md has no section '## audience.csv'"
    section = match.group(1)
    columns = audience_columns(ADIENCE8)
    assert ",".join(columns) in section.splitlines()
    lines = section.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| column |")))
    names = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.append(line.strip("|").split("|", 1)[0].strip().strip("`"))
    # the group columns (every gender x age class of the label set) are one documented row
    assert names == [*columns[:5], "<gender>_<age>", columns[-1]]
    assert columns[5:-1] == tuple(f"{g}_{a}" for g in ("male", "female") for a in AGE_BUCKETS)
    for key in ("totals", "people", "groups", "gates", *FACE_GATES, "min_frames", "untracked"):
        assert f"`{key}`" in section, key


def test_on_window_gets_each_row_as_written_and_stop_ends_a_stream(
    tmp_path, mtcnn, random_classifier
) -> None:
    """The hooks the web demo's Audience tab runs the job loop with: ``on_window`` receives
    audience.csv's rows in order; ``stop`` ends a stream as Ctrl-C does (its grabber stops,
    the files are still written)."""
    video = write_video(tmp_path / "in" / "stay.mp4", zoom_frames("biden.jpg", 45), fps=10)
    got: list[dict] = []
    summary = predict(
        video, tmp_path / "file", mtcnn, random_classifier, video_stride=3, progress=False,
        annotate=False, audience_window=1.5, on_window=got.append,
    )  # fmt: skip
    assert got == summary.audience["windows"] and len(got) == 3
    assert [r["window_start"] for r in _csv(tmp_path / "file" / "audience.csv")] == [
        str(r["window_start"]) for r in got
    ]
    stop = threading.Event()
    frames = zoom_frames("biden.jpg", 30, size=(160, 200)) * 5  # 10 s at 15 fps
    with MJPEGServer(frames, fps=15) as server:
        summary = predict(
            server.url("/live.mjpg"), tmp_path / "live", mtcnn, random_classifier,
            video_stride=1, video_stall_seconds=5, progress=False, annotate=False,
            audience_window=0.5, audience_min_frames=2, privacy=True,
            on_window=lambda row: stop.set(), stop=stop,
        )  # fmt: skip
    assert summary.stream["end"] == "stopped"
    assert summary.audience["windows"] and summary.audience["totals"]["people"] == 1
    written = sorted(p.name for p in (tmp_path / "live").iterdir())
    assert written == ["audience.csv", "audience.json", "audience.png"]


def test_audience_chart_legend_above_the_bars_and_headroom_for_the_dots(tmp_path) -> None:
    """audience.png as a person reads it: the legend of 14 groups sits above both plots
    (over the bars it hid the first windows), and the tallest bar and its "people" dot stay
    below the top edge."""
    import matplotlib.pyplot as plt

    from agegender.inference.audience import audience_figure, group_names, plot_audience

    groups = group_names(ADIENCE8)
    rows = []
    for w in range(8):
        row = {"video": "shop.mp4", "window_start": 60.0 * w, "window_end": 60.0 * w + 60}
        row.update({g: (w + i) % 3 if (w * 7 + i) % 5 < 2 else 0 for i, g in enumerate(groups)})
        row["people"] = sum(row[g] for g in groups)
        rows.append(row)
    totals = {"people": sum(r["people"] for r in rows),
              "groups": {g: sum(r[g] for r in rows) for g in groups}}  # fmt: skip
    figure = audience_figure(rows, totals, groups)
    try:
        renderer = figure.canvas.get_renderer()
        over_time, total = figure.axes
        (legend,) = figure.legends
        low = legend.get_window_extent(renderer).y0
        for axes in (over_time, total):
            assert axes.get_window_extent(renderer).y1 <= low
            assert axes.title.get_window_extent(renderer).y1 <= low + 1
        assert not over_time.get_legend()  # none inside the plot
        tallest = max(r["people"] for r in rows)
        assert tallest <= 0.9 * over_time.get_ylim()[1]
        assert max(totals["groups"].values()) <= 0.9 * total.get_xlim()[1]
    finally:
        plt.close(figure)
    path = plot_audience(tmp_path / "audience.png", rows, totals, groups)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cv2.imread(str(path)).shape[:2] == (500, 1200)
