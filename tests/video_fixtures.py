"""Small generated videos from the sample photos (nothing committed), and a local MJPEG
server that serves them the way an IP camera does (``multipart/x-mixed-replace``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from agegender.images import load_image

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def zoom_frames(
    photo: str | Path,
    frames: int = 40,
    size: tuple[int, int] = (160, 200),
    zoom: float = 1.5,
    pan: float = 0.0,
) -> list[np.ndarray]:
    """BGR frames of a slow zoom (and horizontal pan, in fractions of the width) over a
    photo; ``size`` is (width, height)."""
    image = cv2.cvtColor(load_image(SAMPLES / photo), cv2.COLOR_RGB2BGR)
    h, w = image.shape[:2]
    width, height = size
    out = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        z = 1 + (zoom - 1) * t
        cw, ch = w / z, h / z
        cx, cy = w / 2 + pan * w * (t - 0.5), h / 2.3
        x0 = min(max(cx - cw / 2, 0), w - cw)
        y0 = min(max(cy - ch / 2, 0), h - ch)
        sx, sy = width / cw, height / ch
        matrix = np.float32([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]])
        out.append(cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT))
    return out


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


class MJPEGServer:
    """Serves ``frames`` on 127.0.0.1 as MJPEG at ``fps``: ``/live.mjpg`` sends them all and
    closes; ``/stall.mjpg`` sends ``stall_after`` frames and then holds the connection open
    without sending anything until the server stops (a frozen camera)."""

    def __init__(self, frames: Sequence[np.ndarray], fps: float = 10, stall_after: int = 5):
        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.fps = fps
        self.stall_after = stall_after
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for i, jpeg in enumerate(server.jpegs):
                        if self.path.startswith("/stall") and i == server.stall_after:
                            server.stop.wait()
                            return
                        head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                        self.wfile.write(head % len(jpeg) + jpeg + b"\r\n")
                        self.wfile.flush()
                        time.sleep(1 / server.fps)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> MJPEGServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
