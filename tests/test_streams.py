"""Cameras and streams: a generated video served as MJPEG over HTTP on 127.0.0.1 (what an IP
camera sends), read in its own thread; a slow model drops frames, a stalled or dead source
ends the run with its rows saved."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest
from video_fixtures import MJPEGServer, zoom_frames

from agegender.faces import Detector
from agegender.inference import predict
from agegender.inference.streams import (
    FrameGrabber,
    gui_available,
    is_stream,
    stream_name,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def frames():
    return zoom_frames("biden.jpg", 30, size=(160, 200))


def _rows(out: Path, name: str = "predictions.csv") -> pd.DataFrame:
    return pd.read_csv(out / name, keep_default_na=False, dtype=str)


def _frame_numbers(df: pd.DataFrame) -> list[int]:
    return [int(p.rpartition("#frame=")[2]) for p in df["path"] if "#frame=" in p]


class SlowDetector(Detector):
    """The real detector, made slower than the camera."""

    thread_safe = False

    def __init__(self, detector, seconds: float) -> None:
        self.detector, self.seconds = detector, seconds

    def detect(self, image):
        time.sleep(self.seconds)
        return self.detector.detect(image)


def test_stream_rows_tracks_and_recording(tmp_path, frames, mtcnn, random_classifier) -> None:
    with MJPEGServer(frames, fps=20) as server:
        url = server.url("/live.mjpg")
        summary = predict(
            url,
            tmp_path,
            mtcnn,
            random_classifier,
            video_stride=1,
            video_stall_seconds=5,
            progress=False,
        )
    df = _rows(tmp_path)
    numbers = _frame_numbers(df)
    assert all(p.startswith(f"{url}#frame=") for p in df["path"])
    # in order, each once; the first is whatever frame was newest when the model was ready
    assert numbers == sorted(set(numbers)) and numbers[-1] >= 25
    assert set(df["status"]) == {"ok"}
    stream = summary.stream
    assert stream["received"] == 30 and stream["end"] == "closed"
    assert stream["analysed"] == len(numbers) and stream["dropped"] == 30 - len(numbers)
    assert set(df["track"]) <= {"1"} and "1" in set(df["track"])
    tracks = _rows(tmp_path, "tracks.csv")
    assert list(tracks["video"]) == [url] and list(tracks["track"]) == ["1"]
    # the recording holds every frame received, at the stream's size
    recording = tmp_path / "annotated" / f"{stream_name(url)}.mp4"
    capture = cv2.VideoCapture(str(recording))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 30
    assert (capture.get(3), capture.get(4)) == (160, 200)


def test_slow_model_drops_frames_instead_of_queueing(
    tmp_path, frames, mtcnn, random_classifier
) -> None:
    with MJPEGServer(frames, fps=20) as server:  # 50 ms per frame; the model takes 250 ms+
        summary = predict(
            server.url("/live.mjpg"), tmp_path, SlowDetector(mtcnn, 0.25), random_classifier,
            video_stride=1, video_stall_seconds=5, progress=False,
        )  # fmt: skip
    numbers = _frame_numbers(_rows(tmp_path))
    assert summary.stream["received"] == 30
    assert len(numbers) <= 10 and summary.stream["dropped"] >= 20
    assert max(b - a for a, b in zip(numbers[:-1], numbers[1:], strict=True)) >= 3
    # the newest frame was analysed, not the oldest queued one
    assert numbers[-1] >= 25


def test_stalled_stream_ends_with_its_rows_saved(
    tmp_path, frames, mtcnn, random_classifier
) -> None:
    with MJPEGServer(frames, fps=20, stall_after=8) as server:
        url = server.url("/stall.mjpg")
        began = time.monotonic()
        summary = predict(
            url,
            tmp_path,
            mtcnn,
            random_classifier,
            video_stride=1,
            video_stall_seconds=1.5,
            progress=False,
        )
        took = time.monotonic() - began
    df = _rows(tmp_path)
    assert took < 10
    assert summary.stream["received"] == 8 and summary.stream["end"] == "stalled"
    assert list(df["status"])[-1] == "error: stream stalled (no frame for 1.5 s)"
    assert df["path"].iloc[-1] == url
    ok = df[df["status"] == "ok"]
    assert len(ok) >= 1 and max(_frame_numbers(ok)) <= 7
    assert (tmp_path / "tracks.csv").is_file()
    assert cv2.VideoCapture(str(tmp_path / "annotated" / f"{stream_name(url)}.mp4")).get(7) == 8


def test_grabber_watchdog_when_read_never_returns(tmp_path) -> None:
    """A backend without a read timeout (a camera driver that hangs): the model loop's
    watchdog ends the run; the reader thread is abandoned (daemon)."""

    class Hanging:
        def __init__(self) -> None:
            self.release_called = threading.Event()

        def read(self):
            time.sleep(30)
            return False, None

        def release(self) -> None:
            self.release_called.set()

    grabber = FrameGrabber(Hanging(), read_seconds=30).start()
    began = time.monotonic()
    assert grabber.newest(-1, timeout=0.5) is None
    assert 0.4 < time.monotonic() - began < 2 and not grabber.ended and grabber.alive


def test_url_that_does_not_open_is_an_error_row(tmp_path, mtcnn, random_classifier) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/none.mjpg"
    summary = predict(url, tmp_path, mtcnn, random_classifier, video_open_seconds=2)
    df = _rows(tmp_path)
    assert list(df["path"]) == [url] and list(df["status"]) == ["error: cannot open stream"]
    assert summary.errors == 1


def test_max_frames_and_headless_window(tmp_path, frames, mtcnn, random_classifier, capsys):
    with MJPEGServer(frames, fps=20) as server:
        summary = predict(
            server.url("/live.mjpg"), tmp_path, mtcnn, random_classifier, video_stride=2,
            video_max_frames=6, video_show=True, progress=False,
        )  # fmt: skip
    assert summary.stream["received"] == 6 and summary.stream["end"] == "limit"
    assert max(_frame_numbers(_rows(tmp_path))) <= 5
    available, why = gui_available()
    if not available:
        assert f"no live window: {why}" in capsys.readouterr().err


def test_stream_as_json_lines(tmp_path, frames, mtcnn, random_classifier) -> None:
    import json

    with MJPEGServer(frames, fps=20) as server:
        predict(
            server.url("/live.mjpg"), tmp_path, mtcnn, random_classifier, video_stride=1,
            video_max_frames=8, annotate=False, progress=False, format="jsonl",
        )  # fmt: skip
    objects = [
        json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()
    ]
    assert objects and all(o["status"] == "ok" and "track" in o for o in objects)
    assert not (tmp_path / "predictions.csv").exists()


def test_stream_cannot_be_resumed(tmp_path) -> None:
    """Refused by the source before any model work (the detector and network are unused)."""
    from agegender.inference import ResumeError, ShardError

    with pytest.raises(ResumeError, match="cannot be resumed"):
        predict("rtsp://127.0.0.1:9/x", tmp_path, None, None, resume=True)
    with pytest.raises(ShardError, match="cannot be sharded"):
        predict("rtsp://127.0.0.1:9/x", tmp_path, None, None, num_shards=2)


def test_is_stream(tmp_path) -> None:
    assert is_stream("0") and is_stream(0) and is_stream("rtsp://cam/1")
    assert is_stream("http://127.0.0.1:8000/x.mjpg")
    assert not is_stream("photos/") and not is_stream(tmp_path)
    assert stream_name("0") == "camera0"
    assert stream_name("rtsp://user@cam:554/live?x=1") == "user_cam_554_live"


def test_predict_cli_on_a_stream(tmp_path, frames, original_classifier) -> None:
    """predict.py input=http://... (Hydra takes the URL as is); the stall ends it cleanly.
    (``original_classifier``: the weights predict.py loads are cached, or skip/fail.)"""
    with MJPEGServer(frames, fps=20, stall_after=10) as server:
        url = server.url("/stall.mjpg")
        run = subprocess.run(
            [sys.executable, "predict.py", f"input={url}", f"output={tmp_path}",
             "video.stride=2", "video.stall_seconds=1.5", "progress=false"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "tracks in 1 video (stream: 10 frames received" in run.stdout
    assert "ended: stalled" in run.stdout
    df = _rows(tmp_path)
    assert df["status"].iloc[-1].startswith("error: stream stalled") and len(df) >= 2


def test_redact_url() -> None:
    from agegender.inference.streams import redact_url

    assert redact_url("rtsp://viewer:pw@cam.local:554/live") == "rtsp://***@cam.local:554/live"
    assert redact_url("http://user@host/x.mjpg") == "http://***@host/x.mjpg"
    assert redact_url("http://host/a@b.mjpg") == "http://host/a@b.mjpg"  # not userinfo
    assert redact_url("http://h/x?token=abc&fps=5") == "http://h/x?token=***&fps=5"
    assert redact_url("0") == "0" and redact_url("http://host/live") == "http://host/live"


def test_a_stream_password_is_never_printed_or_stored(tmp_path, frames, original_classifier):
    """predict.py input=http://viewer:<password>@host/...: the stream is read with it, but
    neither the console nor any file of the output (rows, tracks, audience counts, settings,
    Hydra's records, file names) holds the password; rows name the stream http://***@..."""
    secret = "s3cret-PW-42"
    with MJPEGServer(frames, fps=20, stall_after=10) as server:
        url = server.url("/live.mjpg").replace("http://", f"http://viewer:{secret}@")
        run = subprocess.run(
            [sys.executable, "predict.py", f"input={url}", f"output={tmp_path}",
             "video.stride=2", "video.stall_seconds=1.5", "progress=false",
             "audience.window=2"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert secret not in run.stdout + run.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert secret not in str(path) and secret.encode() not in path.read_bytes(), path
    df = _rows(tmp_path)
    frames_read = df[df["path"].str.contains("#frame=")]
    assert len(frames_read) >= 2 and all(p.startswith("http://***@127.0.0.1") for p in df["path"])
