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

from agegender.data.demo import Walk, camera_clip, portrait, stage_clip
from agegender.images import load_image

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
#: The four people of data/samples (the cameraman is seen in profile).
PEOPLE = ("astronaut.jpg", "biden.jpg", "obama.jpg", "camera.png")
#: Staged clips: frame size (width, height), where a portrait's top edge is.
STAGE = (640, 260)
TOP = 30.0


def zoom_frames(
    photo: str | Path,
    frames: int = 40,
    size: tuple[int, int] = (160, 200),
    zoom: float = 1.5,
    pan: float = 0.0,
) -> list[np.ndarray]:
    """BGR frames of a slow zoom (and horizontal pan, in fractions of the width) over a
    sample photo; ``size`` is (width, height)."""
    image = cv2.cvtColor(load_image(SAMPLES / photo), cv2.COLOR_RGB2BGR)
    return camera_clip(image, frames, size, zoom=(1.0, zoom), pan=pan)


def portrait_of(photo: str) -> np.ndarray:
    """A sample photo's head and shoulders, 160 x 200 BGR (faces ~35-60 px): a person of a
    staged clip."""
    return portrait(cv2.cvtColor(load_image(SAMPLES / photo), cv2.COLOR_RGB2BGR), (160, 200))


def at_one_spot(
    photos: Sequence[str], seconds: float, gap: float = 0.0, fps: float = 10
) -> tuple[list[np.ndarray], list[Walk]]:
    """Frames of people shown one after the other at the same place (``seconds`` each,
    ``gap`` seconds of empty picture between them; 0 = hard cuts), and the walks (who is
    where when: the truth)."""
    step = seconds + gap
    walks = [
        Walk(
            portrait_of(p),
            round(i * step * fps),
            round((i * step + seconds) * fps),
            (240, TOP),
            who=p,
        )
        for i, p in enumerate(photos)
    ]
    return stage_clip(walks, walks[-1].end, STAGE), walks


def who_is_where(walks: Sequence[Walk], frame: int, box: Sequence[float]) -> str:
    """Whose face a box on a frame is: the person whose picture's centre is nearest the
    box's centre ("" when two pictures are about as near: people passing each other)."""
    cx = (box[0] + box[2]) / 2
    near = sorted(
        (abs((walk.rect(frame)[0] + walk.rect(frame)[2]) / 2 - cx), walk.who)
        for walk in walks
        if walk.start <= frame < walk.end
    )
    if not near or (len(near) > 1 and near[1][0] - near[0][0] < 40):
        return ""
    return near[0][1]


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
