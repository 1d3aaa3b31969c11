"""The closing line of a prediction run counts what a person gave it: photos as inputs, a
video as one video and its analysed frames (not "50 inputs" for one clip)."""

from __future__ import annotations

from agegender.inference.inputs import InputItem
from agegender.inference.results import ImageResult
from agegender.inference.summary import Summary


def _frame(video: str, index: int) -> ImageResult:
    return ImageResult(InputItem(f"{video}#frame={index}", video, video=video, frame=index))


def test_one_video_of_50_frames_reads_as_one_video() -> None:
    summary = Summary()
    for index in range(0, 100, 2):
        summary.add(_frame("clip.mp4", index))
    summary.videos = 1
    line = summary.line()
    assert line.startswith("1 video, 50 frames analysed, 0 faces, 50 without a face,")
    assert "inputs" not in line and line.endswith("frames/s)")


def test_photos_and_two_videos_are_counted_apart() -> None:
    summary = Summary()
    summary.add(ImageResult(InputItem("a.jpg", "a.jpg")))
    for video in ("a.mp4", "b.mp4"):
        for index in range(3):
            summary.add(_frame(video, index))
    assert summary.inputs_text() == "1 image, 2 videos, 6 frames analysed"
    assert summary.line().endswith("images/s)")


def test_photos_only_keep_the_inputs_count() -> None:
    summary = Summary()
    for name in ("a.jpg", "b.jpg"):
        summary.add(ImageResult(InputItem(name, name)))
    assert summary.line().startswith("2 inputs, 0 faces, 2 without a face, 0 errors")


def test_a_stream_is_called_a_stream() -> None:
    summary = Summary(stream={"received": 9, "analysed": 3, "dropped": 6, "end": "stopped"})
    for index in range(3):
        summary.add(_frame("camera0", index))
    assert summary.inputs_text() == "1 stream, 3 frames analysed"


def test_a_stream_that_stalled_counts_its_error_apart() -> None:
    """README's stalled stream: 25 frames and the stall's error row, not "26 inputs"."""
    summary = Summary(stream={"received": 30, "analysed": 25, "dropped": 5, "end": "stalled"})
    for index in range(25):
        summary.add(_frame("live.mjpg", index))
    summary.add(ImageResult(InputItem("live.mjpg", "live.mjpg"), error="stream stalled"))
    assert summary.line().startswith("1 stream, 25 frames analysed, 0 faces, 25 without a")
    assert ", 1 errors," in summary.line()
