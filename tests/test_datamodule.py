"""AdienceDataModule on a generated demo tree: batches, subject-exclusive splits, the cache."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from agegender.data import AdienceDataModule
from agegender.data.cache import CacheError, FaceCache
from agegender.data.demo import generate_demo
from agegender.data.folds import image_relpath, load_folds
from agegender.labels import IGNORE_INDEX
from agegender.models import LeviHassnerNet
from agegender.transforms import EvalPreset


def _dm(root, **kwargs):
    kwargs = {"num_workers": 0, "batch_size": 6, "source": "aligned", **kwargs}
    kwargs.setdefault("preprocess", {"progress": False, "workers": 1})
    return AdienceDataModule(root, **kwargs)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = generate_demo(tmp_path_factory.mktemp("dm") / "demo", users=10, images_per_user=4)
    _dm(root, auto_preprocess=True).prepare_data()
    return root


def test_batches_follow_interface(demo_root):
    dm = _dm(demo_root, fold=2, label_policy="remap")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "age", "gender", "age_mask", "gender_mask", "index", "origin"}
    assert batch["image"].shape == (6, 3, 227, 227) and batch["image"].dtype == torch.float32
    assert batch["origin"].shape == (6, 3) and batch["origin"].dtype == torch.int64
    assert batch["image"].min() >= 0 and batch["image"].max() <= 255
    for task in ("age", "gender"):
        assert batch[task].dtype == torch.int64
        assert torch.equal(batch[f"{task}_mask"], batch[task] != IGNORE_INDEX)
    assert isinstance(dm.val_dataloader(), torch.utils.data.DataLoader)
    centre, ten = dm.test_dataloader()
    assert next(iter(centre))["image"].shape == (6, 3, 227, 227)
    assert next(iter(ten))["image"].shape == (6, 10, 3, 227, 227)
    assert next(iter(ten))["origin"].shape == (6, 10, 3)
    dm_single = _dm(demo_root, fold=2, test_ten_crop=False)
    dm_single.setup("test")
    assert isinstance(dm_single.test_dataloader(), torch.utils.data.DataLoader)


def test_eval_images_are_the_shared_preset_of_the_cached_face(demo_root):
    dm = _dm(demo_root, fold=0)
    dm.setup("test")
    ds = dm.datasets["test"]
    item = ds[3]
    face = FaceCache(dm.cache_dir).face(int(ds.shard[3]), int(ds.offset[3]))
    assert torch.equal(item["image"], EvalPreset(LeviHassnerNet.face_spec)(face))
    assert ds.rows["key"][int(item["index"])] == ds.rows["key"][3]


@pytest.mark.parametrize("fold", [0, 3])
def test_splits_are_subject_exclusive_and_complete(demo_root, fold):
    dm = _dm(demo_root, fold=fold, val_fraction=0.25, label_policy="remap")
    dm.setup("fit")
    users = {name: set(rows["user_id"]) for name, rows in dm.splits.items()}
    table, _ = load_folds(demo_root, "remap")
    assert users["test"] == set(table[table["fold"] == fold]["user_id"])
    assert not users["train"] & users["val"]
    assert not (users["train"] | users["val"]) & users["test"]
    assert len(users["val"]) == 2  # 25% of the 8 training users
    assert sum(len(r) for r in dm.splits.values()) == len(table)
    again = _dm(demo_root, fold=fold, val_fraction=0.25, label_policy="remap")
    again.setup("fit")
    assert set(again.splits["val"]["user_id"]) == users["val"]  # seeded: same on every rank


def test_unprocessed_root_says_what_to_run(tmp_path):
    root = generate_demo(tmp_path / "raw", users=5, images_per_user=1)
    dm = _dm(root)
    with pytest.raises(CacheError, match="python -m agegender.data.preprocess"):
        dm.prepare_data()
    with pytest.raises(CacheError, match="run the preprocessing"):
        dm.setup("fit")


def test_demo_flag_generates_and_preprocesses(tmp_path):
    dm = _dm(tmp_path / "fresh", demo=True, demo_users=5, demo_images_per_user=2)
    dm.prepare_data()
    dm.setup("fit")
    assert (tmp_path / "fresh" / "fold_4_data.txt").exists()
    assert sum(len(d) for n, d in dm.datasets.items() if n != "test_10crop") == 10


def test_missing_image_is_reported_and_left_out(tmp_path):
    root = generate_demo(tmp_path / "holes", users=5, images_per_user=2)
    table, _ = load_folds(root, "remap")
    row = table.iloc[0]
    (root / image_relpath(row.user_id, row.face_id, row.original_image, "aligned")).unlink()
    dm = _dm(root, auto_preprocess=True, label_policy="remap")
    dm.prepare_data()
    index = FaceCache(dm.cache_dir).all_rows
    assert (index["status"] == "missing").sum() == 1
    with pytest.warns(UserWarning, match="1 rows left out"):
        dm.setup("fit")
    assert sum(len(r) for r in dm.splits.values()) == len(table) - 1


def test_deleting_images_never_moves_a_user(tmp_path):
    """Users go to train/validation from the fold files alone: with images deleted (a whole
    validation user's among them, and some of other users), every remaining row stays in
    the split its user had, and only the deleted rows are gone."""

    def users_by_split(dm):
        return {name: set(rows["user_id"]) for name, rows in dm.splits.items()}

    whole = generate_demo(tmp_path / "whole", users=20, images_per_user=3)
    dm = _dm(whole, auto_preprocess=True, label_policy="remap", val_fraction=0.2)
    dm.prepare_data()
    dm.setup("fit")
    before = users_by_split(dm)
    keys_before = {name: set(rows["key"]) for name, rows in dm.splits.items()}

    holes = tmp_path / "holes"
    shutil.copytree(whole, holes, ignore=shutil.ignore_patterns("cache"))
    table, _ = load_folds(holes, "remap")
    gone_user = sorted(before["val"])[0]
    doomed = table[(table["user_id"] == gone_user) | (table.index % 7 == 0)]
    for row in doomed.itertuples():
        (holes / image_relpath(row.user_id, row.face_id, row.original_image, "aligned")).unlink(
            missing_ok=True
        )
    dm = _dm(holes, auto_preprocess=True, label_policy="remap", val_fraction=0.2)
    dm.prepare_data()
    with pytest.warns(UserWarning, match="rows left out"):
        dm.setup("fit")
    after = users_by_split(dm)
    assert gone_user not in after["val"]  # all its images are gone ...
    assert after["val"] == before["val"] - {gone_user}  # ... and no one took its place
    for name in before:
        assert after[name] <= before[name]
        gone = {k for k in keys_before[name] if k.split("/")[0] in set(doomed["user_id"])}
        assert set(dm.splits[name]["key"]) <= keys_before[name]
        assert len(keys_before[name]) - len(dm.splits[name]) <= len(gone)


def test_fixed_files_are_retried_on_request(tmp_path):
    """A plain rerun resumes past a missing file; once it is back, retry_failed=true caches
    it (a newer index entry supersedes the old one) and the row returns to the splits."""
    root = generate_demo(tmp_path / "fix", users=5, images_per_user=2)
    table, _ = load_folds(root, "remap")
    row = table.iloc[0]
    image = root / image_relpath(row.user_id, row.face_id, row.original_image, "aligned")
    saved = image.read_bytes()
    image.unlink()
    _dm(root, auto_preprocess=True, label_policy="remap").prepare_data()
    image.write_bytes(saved)
    assert _dm(root, label_policy="remap").preprocess().processed == 0  # resume: nothing to do
    options = {"progress": False, "workers": 1, "retry_failed": True}
    report = _dm(root, label_policy="remap", preprocess=options).preprocess()
    assert report.processed == 1 and report.missing == 0
    dm = _dm(root, label_policy="remap")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "rows left out" any more
        dm.setup("fit")
    assert sum(len(r) for r in dm.splits.values()) == len(table)
    rows = FaceCache(dm.cache_dir).all_rows
    assert rows.index.is_unique and (rows["status"] == "ok").all()


def test_no_image_found_at_all_is_a_clear_error(tmp_path):
    """Fold files without their images (a wrong data.root, an unpacked archive elsewhere):
    preprocessing reports every file missing; setup says so and how to recover."""
    root = generate_demo(tmp_path / "empty", users=5, images_per_user=2)
    shutil.rmtree(root / "aligned")
    dm = _dm(root, auto_preprocess=True, label_policy="remap")
    dm.prepare_data()
    with pytest.raises(CacheError, match="none of the 10 rows .*data.preprocess.retry_failed=true"):
        dm.setup("fit")


def test_worker_processes_read_the_cache(demo_root):
    dm = _dm(demo_root, num_workers=2, persistent_workers=False)
    dm.setup("fit")
    seen = torch.cat([b["index"] for b in dm.val_dataloader()])
    assert sorted(seen.tolist()) == list(range(len(dm.datasets["val"])))


def test_cache_of_another_source_is_refused(demo_root, tmp_path):
    shutil.copytree(_dm(demo_root).cache_dir, tmp_path / "wrong")
    dm = _dm(demo_root, source="mtcnn", cache_dir=tmp_path / "wrong")
    with pytest.raises(CacheError, match="aligned"):
        dm.setup("fit")


@pytest.mark.parametrize("name", ["adience", "demo", "csv"])
def test_data_configs_instantiate(tmp_path, name):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from agegender.data import CsvDataModule

    conf = Path(__file__).resolve().parents[1] / "conf"
    overrides = [f"data={name}", f"data.root={tmp_path}"]
    if name == "csv":
        overrides = ["data=csv", f"data.csv={tmp_path / 'x.csv'}"]
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("preprocess", overrides=overrides)
    dm = instantiate(cfg.data)
    assert isinstance(dm, CsvDataModule if name == "csv" else AdienceDataModule)
    assert dm.batch_size > 0 and dm.preprocess_options["workers"] == 2


def test_demo_through_mtcnn_preprocessing(tmp_path):
    """The MTCNN path end to end: every demo face is cached (detected or flagged fallback)."""
    root = generate_demo(tmp_path / "m", users=5, images_per_user=1)
    dm = _dm(root, source="mtcnn", auto_preprocess=True, label_policy="remap")
    dm.prepare_data()
    index = FaceCache(dm.cache_dir).all_rows
    assert (index["status"] == "ok").all() and len(index) == 5
    assert (index["detected"] | (index["fallback"] == "no_face:centre")).all()
    dm.setup("test")
    assert next(iter(dm.test_dataloader()[0]))["image"].shape[1:] == (3, 227, 227)


def test_ddp_eval_loaders_split_every_set_without_padding(demo_root):
    """Under DDP (here 3 processes, as Lightning's strategy reports them), the val/test loaders
    of the ranks hold disjoint shares that together are the whole set, each sample once, for
    sets not divisible by the world size (Lightning's padding DistributedSampler would repeat
    samples); Lightning keeps a DistributedSampler as it is. Without a distributed trainer:
    plain sequential loaders."""
    from types import SimpleNamespace

    from torch.utils.data import DistributedSampler, SequentialSampler

    world = 3
    dm = _dm(demo_root, fold=1, batch_size=4)
    dm.setup("fit")
    sizes = {name: len(ds) for name, ds in dm.datasets.items() if name != "train"}
    assert all(n % world for n in sizes.values()), sizes  # padding would show in every set
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)

    seen: dict[str, list[list[int]]] = {name: [] for name in sizes}
    for rank in range(world):
        kwargs = {"num_replicas": world, "rank": rank}
        dm.trainer = SimpleNamespace(distributed_sampler_kwargs=kwargs)
        loaders = {"val": dm.val_dataloader()}
        loaders["test"], loaders["test_10crop"] = dm.test_dataloader()
        for name, loader in loaders.items():
            assert isinstance(loader.sampler, DistributedSampler)
            seen[name].append([int(i) for b in loader for i in b["index"]])
        train = dm.train_dataloader().sampler  # ours, so Lightning leaves it (and set_epoch) be
        assert (train.num_replicas, train.rank) == (world, rank)
    for name, shares in seen.items():
        flat = [i for share in shares for i in share]
        assert sorted(flat) == list(range(sizes[name])), (name, shares)  # each exactly once
        assert max(map(len, shares)) - min(map(len, shares)) <= 1, name
    dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 1, "rank": 0})
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)


def test_kept_duplicates_list_the_cached_face_twice(demo_root):
    # the demo tree repeats one row, as Adience does; both copies read the one cached face
    dropped, kept = _dm(demo_root), _dm(demo_root, duplicates="keep")
    dropped.setup("fit")
    kept.setup("fit")
    assert len(kept.table) == len(dropped.table) + 1
    assert dropped.table["key"].is_unique
    twice = kept.table["key"][kept.table["key"].duplicated()].tolist()
    assert len(twice) == 1 and kept.jobs()["key"].is_unique
    found = {}
    for name in ("train", "val", "test"):
        ds = kept.datasets[name]
        positions = ds.rows.index[ds.rows["key"] == twice[0]].tolist()
        if positions:
            found[name] = positions
            assert len({(ds.shard[i], ds.offset[i]) for i in positions}) == 1  # one cached face
    assert [len(p) for p in found.values()] == [2]  # listed twice, in one split
