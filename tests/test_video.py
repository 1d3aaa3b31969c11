"""Videos: track column, tracks.csv (averaged probabilities), annotated/<video>.mp4 with every
frame, video.max_frames, resume with tracks, a truncated file."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from video_fixtures import PEOPLE, STAGE, TOP, at_one_spot, portrait_of, who_is_where, zoom_frames

from agegender.data.demo import Walk, stage_clip, write_video
from agegender.inference import predict
from agegender.inference.tracking import (
    MIN_SIMILARITY,
    TRACK_COLUMNS,
    FaceTracker,
    label_changes,
)
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


def _people_of_tracks(df: pd.DataFrame, walks: list[Walk]) -> dict[str, set[str]]:
    """{track id: the people its faces belong to} (faces whose person is clear)."""
    out: dict[str, set[str]] = {}
    for _, row in df[df["status"] == "ok"].iterrows():
        frame = int(row["path"].rpartition("#frame=")[2])
        box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
        who = who_is_where(walks, frame, box)
        if who:
            out.setdefault(row["track"], set()).add(who)
    return out


def test_people_who_follow_each_other_at_one_spot_get_their_own_tracks(
    tmp_path, mtcnn, random_classifier
) -> None:
    """Four people shown 1.5 s each at the same place, hard cuts: four tracks, four people
    (by box overlap alone each new face carried on the track of the one before)."""
    frames, walks = at_one_spot(PEOPLE, seconds=1.5)
    video = write_video(tmp_path / "in" / "cuts.mp4", frames, fps=10)
    out = tmp_path / "out"
    summary = predict(
        video, out, mtcnn, random_classifier, video_stride=2, annotate=False, progress=False,
        audience_window=4, audience_max_yaw=90, audience_min_face=0,  # the cameraman: a
        # small face in profile
    )  # fmt: skip
    people = _people_of_tracks(_rows(out), walks)
    assert "" not in people  # every face is in a track
    assert sorted(sorted(p) for p in people.values()) == sorted([p] for p in PEOPLE)
    assert summary.tracks == 4 and len(_rows(out, "tracks.csv")) == 4
    assert summary.audience["totals"]["people"] == 4


def _away_and_back(
    tmp_path: Path,
    detector,
    classifier,
    gap: float,
    stride: int,
    lost: float,  # noqa: ANN001
) -> tuple[list[str], int]:
    """One person shown 3 s, away ``gap`` s, back 3 s at the same place (10 fps): the track
    column of their rows and the people the audience counter counts (no gates)."""
    face = portrait_of("obama.jpg")
    back = 30 + round(gap * 10)
    walks = [Walk(face, 0, 30, (240, TOP)), Walk(face, back, back + 30, (240, TOP))]
    name = f"away-{gap}-{stride}-{lost}"
    video = write_video(tmp_path / "in" / f"{name}.mp4", stage_clip(walks, back + 30, STAGE))
    out = tmp_path / name
    summary = predict(
        video, out, detector, classifier, video_stride=stride, annotate=False, progress=False,
        video_lost_seconds=lost, audience_window=10, audience_min_frames=1,
    )  # fmt: skip
    df = _rows(out)
    return list(df[df["status"] == "ok"]["track"]), summary.audience["totals"]["people"]


def test_lost_seconds_are_seconds_of_the_video(tmp_path, mtcnn, random_classifier) -> None:
    """video.stride=15 at 10 fps analyses a frame every 1.5 s: a person missing from one of
    them was away 1.5 s, longer than lost_seconds=1 (a new track and a new person; the
    earlier rule kept an id for at least one analysed frame, however long), shorter than
    lost_seconds=2. Every frame analysed, 0.5 s away is within lost_seconds=1."""
    kwargs = dict(detector=mtcnn, classifier=random_classifier)
    # analysed frames 0, 15 (face), 30 (away), 45, 60 (face)
    assert _away_and_back(tmp_path, gap=1.5, stride=15, lost=1.0, **kwargs) == (
        ["1", "1", "2", "2"], 2,
    )  # fmt: skip
    assert _away_and_back(tmp_path, gap=1.5, stride=15, lost=2.0, **kwargs) == (["1"] * 4, 1)
    tracks, people = _away_and_back(tmp_path, gap=0.5, stride=1, lost=1.0, **kwargs)
    assert set(tracks) == {"1"} and len(tracks) == 60 and people == 1


def test_tracker_loses_a_face_after_lost_seconds_of_the_frames_time() -> None:
    """A stream's analysed frames come when the model is free (here every 0.5 s of a 30 fps
    camera, video.stride=1): a face is lost after lost_seconds of the frames' stamps, not
    after lost_seconds x 30 analysed frames."""
    box = np.array([[100, 100, 160, 170]], np.float32)
    none = np.zeros((0, 4), np.float32)
    score, no_score = np.array([0.99], np.float32), np.zeros(0, np.float32)
    for back, same in ((1.9, True), (2.1, False)):
        tracker = FaceTracker(fps=30, stride=1, lost_seconds=1.0)
        assert tracker.update(box, score, time=0.0) == [1]
        assert tracker.update(box, score, time=0.5) == [1]
        assert tracker.update(none, no_score, time=1.0) == []  # missing from here
        assert tracker.update(box, score, time=back) == ([1] if same else [2])


def test_looks_tell_the_sample_people_apart(mtcnn) -> None:
    """The appearance check's descriptor: one person under a moving camera stays above
    video.min_similarity's default, two different sample people stay below it, aligned on
    the five landmarks or framed by the box alone (a box-only detector); the same input
    gives the same look."""
    from agegender.faces import Face
    from agegender.faces.appearance import appearance, similarity

    for kind in ("landmarks", "box"):
        looks = {}
        for photo in PEOPLE:
            frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in zoom_frames(photo, 5, zoom=1.3)]
            detected = [(frame, mtcnn.detect(frame)) for frame in frames]
            faces = [
                (frame, best if kind == "landmarks" else Face(best.box, best.score))
                for frame, (best, *_) in [(f, d) for f, d in detected if d]
            ]
            looks[photo] = [appearance(frame, face) for frame, face in faces]
            assert len(looks[photo]) >= 4, photo
            assert np.array_equal(appearance(*faces[0]), looks[photo][0])  # deterministic
        for photo, mine in looks.items():
            steps = zip(mine, mine[1:], strict=False)
            assert min(similarity(a, b) for a, b in steps) > MIN_SIMILARITY, (kind, photo)
            for other, theirs in looks.items():
                if other != photo:
                    worst = max(similarity(a, b) for a in mine for b in theirs)
                    assert worst < MIN_SIMILARITY, (kind, photo, other)


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


def test_people_crossing_or_meeting_keep_their_ids(tmp_path, mtcnn, random_classifier) -> None:
    """Two people walk across each other (the second in front); two others walk up to each
    other until their faces overlap, turn and walk back. Each keeps one id: two tracks per
    clip (by box overlap alone the two who met came back as two new tracks)."""
    obama, astronaut, biden = (portrait_of(p) for p in ("obama.jpg", "astronaut.jpg", "biden.jpg"))
    clips = {
        "cross": [
            Walk(obama, 0, 60, (0, TOP), (480, TOP), who="obama"),
            Walk(astronaut, 0, 60, (480, TOP), (0, TOP), who="astronaut"),
        ],
        "meet": [
            Walk(obama, 0, 25, (0, TOP), (200, TOP), who="obama"),
            Walk(obama, 25, 50, (200, TOP), (0, TOP), who="obama"),
            Walk(biden, 0, 25, (480, TOP), (280, TOP), who="biden"),
            Walk(biden, 25, 50, (280, TOP), (480, TOP), who="biden"),
        ],
    }
    for name, walks in clips.items():
        frames = stage_clip(walks, max(w.end for w in walks), STAGE)
        video = write_video(tmp_path / "in" / f"{name}.mp4", frames)
        out = tmp_path / name
        summary = predict(
            video, out, mtcnn, random_classifier, video_stride=2, annotate=False,
            progress=False,
        )  # fmt: skip
        people = _people_of_tracks(_rows(out), walks)
        expected = sorted([who] for who in {w.who for w in walks})
        assert sorted(sorted(p) for p in people.values()) == expected, name
        assert summary.tracks == 2, name


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
