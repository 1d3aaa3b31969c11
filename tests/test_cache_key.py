"""The face cache is keyed by every setting that changes a pixel: another detector, detector
option, fallback rule, margin or crop scale gets its own folder (and manifest); the same
settings reuse theirs; speed settings do not matter; a folder given explicitly must match."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agegender.data import AdienceDataModule
from agegender.data.cache import (
    FORMAT,
    MANIFEST,
    CacheError,
    FaceCache,
    check_manifest,
    write_manifest,
)
from agegender.data.demo import generate_demo
from agegender.data.preprocess import FaceOptions
from agegender.faces.align import BOX_CROP_SCALE, TEMPLATE_SHRINK

COMMON_SETTINGS = {
    "source",
    "size",
    "decode",
    "detector",
    "detector_kwargs",
    "detector_implementation",
    "fallback_fraction",
    "align_version",
}
#: the adience framing (the default): its template, and the box geometry of box-only faces
PIXEL_SETTINGS = COMMON_SETTINGS | {"framing", "box_points"}
#: the legacy framing: the keys caches were written with before framings had names
LEGACY_SETTINGS = COMMON_SETTINGS | {"template", "template_shrink", "box_crop_scale"}


def _dm(root, preprocess=None, **kwargs):
    options = {"progress": False, "workers": 1, "detector": "haar", **(preprocess or {})}
    kwargs = {"num_workers": 0, "source": "mtcnn", "label_policy": "remap", **kwargs}
    return AdienceDataModule(root, preprocess=options, **kwargs)


def _files(folder):
    """name -> (size, mtime_ns) of every file: a rewritten shard changes it."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_detector_implementation_is_in_the_key():
    """mtcnn (our driver) and mtcnn_facenet share weights and options, not bit-exact faces."""
    ours, facenet = FaceOptions(detector="mtcnn"), FaceOptions(detector="mtcnn_facenet")
    assert ours.settings()["detector_implementation"] == "agegender.faces.mtcnn.MTCNNDetector"
    assert ours.cache_name() != facenet.cache_name()


def test_settings_name_every_pixel_setting_and_nothing_else():
    assert set(FaceOptions().settings()) == PIXEL_SETTINGS
    assert set(FaceOptions(framing="legacy").settings()) == LEGACY_SETTINGS
    # a fixed box crop leaves no box geometry to key on
    assert set(FaceOptions(box_crop_scale=1.5).settings()) == PIXEL_SETTINGS - {"box_points"}
    # Adience's aligned faces run no detector and no alignment: those are not in the key.
    assert set(FaceOptions("aligned").settings()) == {"source", "size", "decode", "resize"}
    assert FaceOptions("aligned").settings()["resize"] == "cv2.resize INTER_LINEAR"
    aligned = FaceOptions("aligned", detector="haar", template_shrink=0.5)
    assert aligned.cache_name() == FaceOptions("aligned").cache_name()


def test_every_pixel_setting_changes_the_key():
    base = FaceOptions()
    variants = [
        FaceOptions(detector="haar"),
        FaceOptions(detector_kwargs={"min_face_size": 20}),
        FaceOptions(detector_kwargs={"thresholds": [0.6, 0.7, 0.7]}),
        FaceOptions(fallback_fraction=0.6),
        FaceOptions(framing="legacy"),
        FaceOptions(framing="legacy", template_shrink=0.6),
        FaceOptions(framing="legacy", box_crop_scale=1.8),
        FaceOptions(box_crop_scale=1.8),
        FaceOptions(
            framing={"template": [[0.4, 0.3], [0.6, 0.3], [0.5, 0.45], [0.42, 0.58], [0.58, 0.58]]}
        ),  # fmt: skip
        FaceOptions(detector="haar", framing="legacy"),
        FaceOptions(size=128),
        FaceOptions("aligned"),
    ]
    names = {base.cache_name(), *(v.cache_name() for v in variants)}
    assert len(names) == len(variants) + 1
    assert FaceOptions(detector="haar").cache_name().startswith("mtcnn-haar-")
    assert FaceOptions("aligned").cache_name().startswith("aligned-")
    # Spelling out a detector default, or the alignment constants, is the same setting.
    assert FaceOptions(detector_kwargs={"min_face_size": 40}).cache_name() == base.cache_name()
    legacy = FaceOptions(framing="legacy")
    same = FaceOptions(
        framing="legacy", template_shrink=TEMPLATE_SHRINK, box_crop_scale=BOX_CROP_SCALE
    )
    assert same.cache_name() == legacy.cache_name()
    # The legacy framing's caches keep the names they had before framings were stored (same
    # settings, same pixels): fixed values, as the aligned one below.
    assert legacy.cache_name() == "mtcnn-mtcnn-f2fa1a388c"
    assert FaceOptions(detector="haar", framing="legacy").cache_name() == "mtcnn-haar-3e7c0a53a7"
    with pytest.raises(ValueError, match="template_shrink .* framing=legacy"):
        FaceOptions(template_shrink=0.6)  # the adience framing has no tight template to shrink
    with pytest.raises(TypeError, match="min_face"):
        FaceOptions(detector_kwargs={"min_face": 20}).settings()  # a typo is not a new cache


def test_key_is_stable_across_processes():
    """Canonical JSON, sorted keys: another interpreter (other hash seed) gets the same key."""
    code = (
        "from agegender.data.preprocess import FaceOptions as F;"
        "print(F(detector='haar', detector_kwargs={'scale_factor': 1.2, 'min_size': 30})"
        ".cache_key(), F('aligned').cache_key())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    here = FaceOptions(detector="haar", detector_kwargs={"min_size": 30, "scale_factor": 1.2})
    assert out.stdout.split() == [here.cache_key(), FaceOptions("aligned").cache_key()]
    # The same on every machine: a fixed value (it changes only when a setting or the format
    # does, and then old caches must not be reused).
    assert FaceOptions("aligned").cache_name() == "aligned-2b9b2b9f43"


def test_key_ignores_speed_settings(tmp_path):
    root = tmp_path / "r"
    slow = _dm(root, {"workers": 1, "chunk_size": 3, "progress": True})
    fast = _dm(root, {"workers": 8, "chunk_size": 500, "retry_failed": True})
    assert slow.cache_dir == fast.cache_dir
    assert slow.cache_dir.parent == root / "cache"
    assert slow.cache_dir.name == FaceOptions(detector="haar").cache_name()


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("key") / "demo", users=5, images_per_user=1)


def _stored(settings: dict, changed: dict) -> bool:
    """Whether the manifest's settings hold the changed setting's value."""
    name, value = next(iter(changed.items()))
    if name == "framing":  # legacy: the keys of the caches before framings had names
        return settings.get("template_shrink") == TEMPLATE_SHRINK and "framing" not in settings
    if name == "box_crop_scale":
        return settings["framing"]["box_scale"] == value
    stored = settings[name]
    return stored == value if not isinstance(value, dict) else stored.items() >= value.items()


@pytest.mark.parametrize(
    "changed",
    [
        {"detector_kwargs": {"min_neighbors": 3}},
        {"fallback_fraction": 0.8},
        {"framing": "legacy"},
        {"box_crop_scale": 2.0},
    ],
)
def test_changed_setting_gets_its_own_folder_and_the_old_one_is_reused(small_root, changed):
    first = _dm(small_root, auto_preprocess=True)
    first.prepare_data()
    before = _files(first.cache_dir)
    second = _dm(small_root, changed, auto_preprocess=True)
    assert second.cache_dir != first.cache_dir
    second.prepare_data()
    manifest = json.loads((second.cache_dir / MANIFEST).read_text())
    assert manifest["format"] == FORMAT and second.cache_dir.name.endswith(manifest["key"])
    assert manifest["settings"] == json.loads(json.dumps(second.face_options().settings()))
    assert _stored(manifest["settings"], changed)
    again = _dm(small_root, auto_preprocess=True)
    assert again.uncached() == 0
    again.prepare_data()
    assert _files(first.cache_dir) == before  # nothing rewritten, nothing added


def test_datamodule_reads_the_cache_of_its_own_settings(small_root):
    """X reads X's faces; Y (another crop scale) is not in the cache and says how to make it,
    with its own overrides; once made, X and Y read different faces."""
    x = _dm(small_root, auto_preprocess=True)
    x.prepare_data()
    y = _dm(small_root, {"box_crop_scale": 2.5})
    with pytest.raises(CacheError, match="not in the cache") as info:
        y.prepare_data()
    command = str(info.value).splitlines()[1].strip()
    assert command.startswith(f"python -m agegender.data.preprocess data.root={small_root}")
    assert "data.preprocess.detector=haar" in command
    assert "data.preprocess.box_crop_scale=2.5" in command
    with pytest.raises(CacheError, match="run the preprocessing"):
        y.setup("fit")  # never falls back to X's faces
    y.preprocess()
    x.setup("fit")
    y.setup("fit")
    assert x.datasets["train"].cache.cache_dir == x.cache_dir
    assert y.datasets["train"].cache.cache_dir == y.cache_dir
    faces = []
    for cache in (FaceCache(x.cache_dir), FaceCache(y.cache_dir)):
        shard, offset = cache.lookup(cache.index.index[:1])
        faces.append(cache.face(int(shard[0]), int(offset[0])))
    assert not np.array_equal(*faces)  # the crop scale really changed the pixels


def test_explicit_cache_dir_must_match_the_settings(small_root, tmp_path):
    made = _dm(small_root, auto_preprocess=True)
    made.prepare_data()
    other = _dm(
        small_root, {"detector": "mtcnn", "fallback_fraction": 0.7}, cache_dir=made.cache_dir
    )
    with pytest.raises(CacheError) as info:
        other.prepare_data()
    message = str(info.value)
    assert 'detector: "haar" -> "mtcnn"' in message
    assert "fallback_fraction: 0.5 -> 0.7" in message
    with pytest.raises(CacheError, match='detector: "haar" -> "mtcnn"'):
        other.setup("fit")
    same = _dm(small_root, {"workers": 2}, cache_dir=made.cache_dir)
    same.setup("fit")  # equal settings: an explicit folder is read as it is
    # A cache of the first format (size and source only) is refused, never reused.
    old = tmp_path / "old"
    old.mkdir()
    (old / MANIFEST).write_text(json.dumps({"format": "agegender.cache.v1", "size": 256,
                                            "source": "mtcnn"}))  # fmt: skip
    with pytest.raises(CacheError, match="format: .*v1.* -> .*v2.*\n.*template"):
        check_manifest(old, FaceOptions().settings())
    write_manifest(tmp_path / "new", FaceOptions(framing="legacy").settings())
    with pytest.raises(CacheError, match="template_shrink: 0.6666666666666666 -> 0.6"):
        write_manifest(
            tmp_path / "new", FaceOptions(framing="legacy", template_shrink=0.6).settings()
        )
    with pytest.raises(CacheError, match="framing"):
        write_manifest(tmp_path / "new", FaceOptions().settings())


def test_printed_command_composes_to_the_same_folder(tmp_path):
    """The overrides in the "run: ..." message parse back (Hydra grammar, shell quoting) to
    a DataModule with the same settings, hence the same folder."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    options = {"detector": "haar", "detector_kwargs": {"min_neighbors": 3, "cascade": "a b.xml"},
               "fallback_fraction": 0.7, "framing": "legacy", "template_shrink": 0.6,
               "box_crop_scale": 2}  # fmt: skip
    dm = _dm(tmp_path / "my root", options, face_size=128)
    args = shlex.split(dm.preprocess_command())[3:]
    assert "data.preprocess.workers=1" not in args  # speed settings are not repeated
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("preprocess", overrides=args)
    again = instantiate(cfg.data)
    assert again.face_options() == dm.face_options()
    assert again.cache_dir == dm.cache_dir


def _run(command, tmp_path):
    """A printed command, run with this interpreter (in-process, quiet, run dir in tmp)."""
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "agegender.data.preprocess"]
    args = [sys.executable, *args[1:], "data.preprocess.progress=false",
            "data.preprocess.workers=1", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.slow  # 25-80 s: CI runs it with -m slow
def test_command_line_detector_change_writes_a_second_cache(tmp_path):
    """Through `python -m agegender.data.preprocess`: MTCNN, then the command a haar-config
    DataModule asks for (a second folder), then MTCNN again (the first folder, untouched)."""
    root = generate_demo(tmp_path / "demo", users=5, images_per_user=1)
    mtcnn = f"python -m agegender.data.preprocess data=demo data.root={root} data.source=mtcnn"
    out = _run(mtcnn, tmp_path)
    assert "rows: 5 (already cached: 0, processed now: 5)" in out
    first = root / "cache" / FaceOptions().cache_name()
    assert f"cache: {first}" in out
    before = _files(first)

    haar = AdienceDataModule(root, demo=True, source="mtcnn", auto_preprocess=False,
                             preprocess={"detector": "haar"}, num_workers=0)  # fmt: skip
    with pytest.raises(CacheError, match="not in the cache") as info:
        haar.prepare_data()
    command = str(info.value).splitlines()[1].strip()
    assert "data.preprocess.detector=haar" in command
    out = _run(command, tmp_path)
    assert "rows: 5 (already cached: 0, processed now: 5)" in out
    assert f"cache: {haar.cache_dir}" in out
    assert haar.cache_dir != first and haar.cache_dir.name.startswith("mtcnn-haar-")
    settings = json.loads((haar.cache_dir / MANIFEST).read_text())["settings"]
    assert settings["detector"] == "haar" and "scale_factor" in settings["detector_kwargs"]
    assert _files(first) == before

    out = _run(mtcnn, tmp_path)
    assert "rows: 5 (already cached: 5, processed now: 0)" in out
    assert _files(first) == before
    assert sorted(p.name for p in (root / "cache").iterdir() if p.is_dir()) == sorted(
        [first.name, haar.cache_dir.name]
    )
    haar.setup("test")  # the haar DataModule reads its own folder
    assert haar.datasets["test"].cache.cache_dir == haar.cache_dir
