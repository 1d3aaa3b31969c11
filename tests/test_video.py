"""Videos: track column, tracks.csv (averaged probabilities), annotated/<video>.mp4 with every
frame, video.max_frames, resume with tracks, a truncated file."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from video_fixtures import zoom_frames

from agegender.data.demo import write_video
from agegender.inference import predict
from agegender.inference.tracking import TRACK_COLUMNS, label_changes
from agegender.inference.video import FaceMark, FrameMarks, marks_at
from agegender.labels import AGE_BUCKETS, GENDERS


def _rows(out: Path, name: str = "predictions.csv") -> pd.DataFrame:
    return pd.read_csv(out / name, keep_default_na=False, dtype=str)


def _probs(df: pd.DataFrame) -> np.ndarray:
    cols = [f"p_age_{i}" for i in range(len(AGE_BUCKETS))]
    cols += [f"p_gender_{i}" for i in range(len(GENDERS))]
    return df[cols].astype(float).to_numpy()


def test_zoom_video_one_track_averaged_and_every_frame_annotated(
    tmp_path, mtcnn, original_classifier
) -> None:
    video = write_video(tmp_path / "in" / "zoom.mp4", zoom_frames("biden.jpg", 40), fps=10)
    out = tmp_path / "out"
    summary = predict(
        video, out, mtcnn, original_classifier, video_stride=4, save_probs=True, progress=False
    )
    df = _rows(out)
    assert list(df["path"]) == [f"{video}#frame={i}" for i in range(0, 40, 4)]
    assert set(df["status"]) == {"ok"} and set(df["track"]) == {"1"}
    assert summary.videos == 1 and summary.tracks == 1
    tracks = _rows(out, "tracks.csv")
    assert tuple(tracks.columns) == TRACK_COLUMNS
    assert len(tracks) == 1
    track = tracks.iloc[0]
    assert (track["video"], track["track"]) == (str(video), "1")
    assert (track["first_frame"], track["last_frame"], track["frames"]) == ("0", "36", "10")
    # the track's probabilities are the mean of its frames' (6-decimal CSV rounding)
    mean = _probs(df).mean(axis=0)
    assert np.abs(_probs(tracks)[0] - mean).max() < 1e-5
    assert track["age"] == AGE_BUCKETS[int(np.argmax(mean[: len(AGE_BUCKETS)]))]
    assert float(track["age_prob"]) == pytest.approx(mean[: len(AGE_BUCKETS)].max(), abs=1e-4)
    # annotated copy: every frame, the input's rate and size, boxes on the frames between
    copy = cv2.VideoCapture(str(out / "annotated" / "zoom.mp4"))
    assert copy.get(cv2.CAP_PROP_FRAME_COUNT) == 40
    assert copy.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
    assert (copy.get(cv2.CAP_PROP_FRAME_WIDTH), copy.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (160, 200)
    source = cv2.VideoCapture(str(video))
    drawn = 0
    for _ in range(40):
        ok_a, a = copy.read()
        ok_b, b = source.read()
        assert ok_a and ok_b
        drawn += int(np.abs(a.astype(int) - b.astype(int)).max() > 100)  # a box is drawn
    assert drawn == 40
    assert not list((out / "annotated").glob("*.jpg"))


def test_face_away_longer_than_lost_seconds_gets_a_new_track(
    tmp_path, mtcnn, random_classifier
) -> None:
    face = zoom_frames("obama.jpg", 1, zoom=1.0)[0]
    blank = np.full_like(face, 40)
    # 1 s of face, 2 s away, 1 s of face again, at 10 fps, every frame analysed
    video = write_video(tmp_path / "in" / "away.mp4", [face] * 10 + [blank] * 20 + [face] * 10)
    ids = {}
    for lost in (1.0, 3.0):
        out = tmp_path / f"out{lost}"
        predict(
            video, out, mtcnn, random_classifier, video_stride=1, annotate=False,
            progress=False, video_lost_seconds=lost,
        )  # fmt: skip
        df = _rows(out)
        ok = df[df["status"] == "ok"]
        assert len(ok) == 20 and (df["status"] == "no_face").sum() == 20
        ids[lost] = list(ok["track"])
        assert len(_rows(out, "tracks.csv")) == len(set(ids[lost]) - {""})
    # gone for 2 s > 1 s: a new person; ByteTrack confirms its id on its second frame,
    # and the first frame's row waits for it, so every row carries an id
    assert ids[1.0] == ["1"] * 10 + ["2"] * 10
    assert ids[3.0] == ["1"] * 20  # within 3 s: the same track


def test_two_faces_keep_their_tracks(tmp_path, mtcnn, random_classifier) -> None:
    left = zoom_frames("obama.jpg", 24, zoom=1.2, pan=0.05)
    right = zoom_frames("biden.jpg", 24, zoom=1.2, pan=-0.05)
    video = write_video(
        tmp_path / "in" / "two.mp4", [np.hstack(pair) for pair in zip(left, right, strict=True)]
    )
    out = tmp_path / "out"
    predict(video, out, mtcnn, random_classifier, video_stride=3, progress=False)
    df = _rows(out)
    df = df[df["status"] == "ok"].copy()
    df["side"] = np.where(df["x1"].astype(float) < 160, "left", "right")
    by_side = df.groupby("side")["track"].agg(set)
    assert by_side["left"] != by_side["right"]
    assert all(len(ids) == 1 for ids in by_side)
    tracks = _rows(out, "tracks.csv")
    assert sorted(tracks["track"]) == ["1", "2"]
    assert sorted(tracks["frames"].astype(int)) == [8, 8]
    assert cv2.VideoCapture(str(out / "annotated" / "two.mp4")).get(7) == 24


def test_max_frames_and_max_seconds(tmp_path, mtcnn, random_classifier) -> None:
    video = write_video(tmp_path / "in" / "z.mp4", zoom_frames("biden.jpg", 30), fps=10)
    for options, frames in (({"video_max_frames": 7}, 7), ({"video_max_seconds": 1.2}, 12)):
        out = tmp_path / f"out{frames}"
        predict(video, out, mtcnn, random_classifier, video_stride=2, progress=False,
                **options)  # fmt: skip
        assert list(_rows(out)["path"]) == [f"{video}#frame={i}" for i in range(0, frames, 2)]
        assert cv2.VideoCapture(str(out / "annotated" / "z.mp4")).get(7) == frames


def test_truncated_video_keeps_what_it_read(tmp_path, mtcnn, random_classifier) -> None:
    video = write_video(tmp_path / "in" / "cut.avi", zoom_frames("biden.jpg", 30), fps=10)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])  # a copy that stopped half way
    out = tmp_path / "out"
    summary = predict(video.parent, out, mtcnn, random_classifier, video_stride=3, progress=False)
    df = _rows(out)
    assert 0 < len(df) < 10 and summary.errors == 0
    assert set(df["track"]) == {"1"}
    copy = cv2.VideoCapture(str(out / "annotated" / "cut.avi.mp4"))
    assert 3 * (len(df) - 1) < copy.get(7) <= 30


def test_resume_mid_video_gives_the_uninterrupted_tracks(
    tmp_path, mtcnn, random_classifier
) -> None:
    left = zoom_frames("obama.jpg", 20, zoom=1.2)
    right = zoom_frames("biden.jpg", 20, zoom=1.2)
    # the second face appears at frame 6: its track is confirmed after the first frame
    frames = [np.hstack((a, b if i >= 6 else np.full_like(b, 30))) for i, (a, b) in
              enumerate(zip(left, right, strict=True))]  # fmt: skip
    video = write_video(tmp_path / "in" / "v.mp4", frames)
    kwargs = dict(video_stride=2, save_probs=True, progress=False)
    predict(video.parent, tmp_path / "a", mtcnn, random_classifier, **kwargs)
    reference = (tmp_path / "a" / "predictions.csv").read_bytes()
    lines = reference.splitlines(keepends=True)
    assert b",2," in reference  # two tracks were made
    (tmp_path / "b").mkdir()
    # killed mid-video after frame 8 (rows 0, 2, 4: one face; 6, 8: two; an input's rows are
    # written together, so a kill leaves whole frames)
    assert lines[7].startswith(f"{video}#frame=8,1,".encode())
    (tmp_path / "b" / "predictions.csv").write_bytes(b"".join(lines[:8]))
    predict(video.parent, tmp_path / "b", mtcnn, random_classifier, resume=True, **kwargs)
    # equal but for float noise: a frame batched with other frames can move a probability
    # by 1e-7, across a 6-decimal rounding boundary
    for name in ("predictions.csv", "tracks.csv"):
        a, b = _rows(tmp_path / "a", name), _rows(tmp_path / "b", name)
        probs = [c for c in a.columns if c.startswith("p_") or c.endswith("_prob")]
        pd.testing.assert_frame_equal(a.drop(columns=probs), b.drop(columns=probs))
        assert np.abs(a[probs].astype(float) - b[probs].astype(float)).max().max() < 1e-5
    assert set(_rows(tmp_path / "b")["track"]) == {"1", "2"}
    assert cv2.VideoCapture(str(tmp_path / "b" / "annotated" / "v.mp4")).get(7) == 20


def test_marks_move_between_analysed_frames() -> None:
    tracked, untracked = (
        FaceMark((0, 0, 10, 10), 1, ("x", "")),
        FaceMark((50, 50, 60, 60), None, ("y", "")),
    )
    a = FrameMarks(0, [tracked, untracked])
    b = FrameMarks(10, [FaceMark((10, 20, 20, 30), 1, ("x", ""))])
    marks = [a, b]
    assert marks_at(marks, 0, 0) == a.faces
    half = marks_at(marks, 0, 5)
    assert half[0].box == pytest.approx((5, 10, 15, 20))  # track 1 moves toward frame 10
    assert half[1].box == (50, 50, 60, 60)  # no track: held
    assert marks_at(marks, 1, 14) == b.faces  # after the last analysed frame: held


def test_label_changes() -> None:
    assert label_changes([]) == 0
    assert label_changes(["a", "a", "b", "a"]) == 2


def test_tracks_csv_is_valid_csv(tmp_path, mtcnn, random_classifier) -> None:
    """A video name with a comma and a quote stays one field in both CSVs."""
    video = write_video(tmp_path / "in" / 'a, "b".mp4', zoom_frames("biden.jpg", 6))
    predict(video, tmp_path / "out", mtcnn, random_classifier, video_stride=3, progress=False)
    with open(tmp_path / "out" / "tracks.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["video"] for r in rows] == [str(video)]


def test_shards_write_their_own_tracks_and_stale_tracks_go(
    tmp_path, mtcnn, random_classifier, samples_dir
) -> None:
    folder = tmp_path / "in"
    write_video(folder / "a.mp4", zoom_frames("biden.jpg", 6))
    write_video(folder / "b.mp4", zoom_frames("obama.jpg", 6))
    out = tmp_path / "out"
    for shard in (0, 1):
        predict(folder, out, mtcnn, random_classifier, video_stride=3, shard=shard,
                num_shards=2, annotate=False, progress=False)  # fmt: skip
    for shard, name in ((0, "a.mp4"), (1, "b.mp4")):
        rows = _rows(out, f"tracks.shard-{shard}-of-2.csv")
        assert list(rows["video"]) == [str(folder / name)]
    assert not (out / "tracks.csv").exists()
    predict(folder, out, mtcnn, random_classifier, video_stride=3, annotate=False, progress=False)
    assert len(_rows(out, "tracks.csv")) == 2
    # a run without videos into the same output: the earlier tracks.csv is not its own
    predict(samples_dir / "obama.jpg", out, mtcnn, random_classifier, progress=False)
    assert not (out / "tracks.csv").exists()
