"""The aligned-face cache: what preprocessing writes once and training reads every epoch.

Format (chosen for loader speed and for surviving a kill):

- ``shard_NNNNN.npy``: uint8 array n x S x S x 3 (RGB), read through ``np.load(mmap_mode="r")``
  so a worker touches only the pages of the faces it serves;
- ``shard_NNNNN.csv``: the index of that shard, one row per input (``key``, ``status``
  ``ok|missing|error``, ``detected``, ``det_score``, ``fallback``, ``error``, ten landmark
  coordinates ``lm0x..lm4y`` and ``offset``, the row in the .npy, -1 when no face was stored);
- ``cache.json``: the manifest, naming the format and every setting that changes a pixel
  (source, face size, image decoding, detector and all its arguments, alignment version,
  template, margin, box crop scale, fallback rule). Its sha256 (:func:`cache_key`) names the
  folder, so each combination of settings is preprocessed once into its own folder and a
  cache is never read back for settings it was not made with.

Each file is written to a temporary name and moved into place with ``os.replace``; the .csv goes
last, so a shard exists only once both files are complete. A killed run therefore leaves whole
shards and maybe a stray temporary, never a half-written entry; a restart skips every key that
a complete shard already holds.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.errors import AgeGenderError
from agegender.fileio import atomic_write

STATUSES: tuple[str, ...] = ("ok", "missing", "error")
LANDMARK_COLUMNS: list[str] = [f"lm{i}{axis}" for i in range(5) for axis in "xy"]
INDEX_COLUMNS: list[str] = [
    "key",
    "status",
    "source",
    "detected",
    "det_score",
    "fallback",
    "error",
    *LANDMARK_COLUMNS,
    "offset",
]
_SHARD = re.compile(r"^shard_(\d{5,})\.csv$")
MANIFEST = "cache.json"
#: Version of the on-disk layout (shards + index + manifest); part of every cache key.
FORMAT = "agegender.cache.v2"
#: Hex digits of the sha256 in a cache folder's name.
KEY_LENGTH = 10


class CacheError(AgeGenderError, RuntimeError):
    """The cache is missing or does not match what was asked of it; says what to run."""


def canonical_json(value: Any) -> str:
    """One spelling of ``value`` on every run and machine: sorted keys, no spaces, ASCII,
    floats as Python writes them (shortest round-trip repr), tuples as lists."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cache_key(settings: dict[str, Any]) -> str:
    """Short hash of the format and every pixel-changing setting: the cache folder's suffix.

    Equal settings give equal keys on any machine; any change gives another folder."""
    text = canonical_json({"format": FORMAT, "settings": settings})
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:KEY_LENGTH]


def read_manifest(cache_dir: str | Path) -> dict[str, Any] | None:
    """``{"format", "key", "settings"}`` of a cache (None when there is no manifest).

    A manifest of the first format (``format, size, source`` only) reads with those two as
    its settings, so the mismatch with today's settings is reported setting by setting."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if "settings" not in meta:
        settings = {k: v for k, v in meta.items() if k != "format"}
        meta = {"format": meta.get("format"), "key": None, "settings": settings}
    return meta


def setting_differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """``"name: old -> new"`` for every setting (and the format) that differs."""
    have = {"format": have.get("format"), **have.get("settings", {})}
    want = {"format": FORMAT, **json.loads(canonical_json(want))}
    lines = []
    for name in sorted(set(have) | set(want)):
        old = canonical_json(have[name]) if name in have else "(not recorded)"
        new = canonical_json(want[name]) if name in want else "(not used)"
        if old != new:
            lines.append(f"{name}: {old} -> {new}")
    return lines


def check_manifest(cache_dir: str | Path, settings: dict[str, Any]) -> None:
    """Raise :class:`CacheError` naming each setting that differs between the faces stored
    in ``cache_dir`` and ``settings`` (the faces would silently be the wrong ones)."""
    have = read_manifest(cache_dir)
    if have is None:
        raise CacheError(f"no face cache at {cache_dir} (run the preprocessing first)")
    differences = setting_differences(have, settings)
    if differences:
        shown = "\n  ".join(differences)
        raise CacheError(
            f"{cache_dir} holds faces made with other settings (stored -> asked):\n  {shown}\n"
            "use another data.cache_dir, or leave it unset: every combination of settings "
            "gets its own folder"
        )


def write_manifest(cache_dir: str | Path, settings: dict[str, Any]) -> None:
    """Record every pixel-changing setting (``cache.json``, readable), or check that an
    existing cache was made with exactly these, so faces of different kinds never mix."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if (cache_dir / MANIFEST).exists():
        check_manifest(cache_dir, settings)
        return
    meta = {"format": FORMAT, "key": cache_key(settings), "settings": settings}
    text = json.dumps(json.loads(canonical_json(meta)), indent=2, sort_keys=True) + "\n"
    atomic_write(cache_dir / MANIFEST, lambda fh: fh.write(text.encode()))


def write_shard(cache_dir: str | Path, shard: int, images: np.ndarray, index: pd.DataFrame) -> None:
    """Write one shard atomically (images first, index last: the index marks it complete)."""
    cache_dir = Path(cache_dir)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"shard images must be n x S x S x 3 uint8, got {images.shape}")
    stored = index["offset"].to_numpy()
    if sorted(stored[stored >= 0].tolist()) != list(range(len(images))):
        raise ValueError("index offsets do not match the stored images")
    index = index.reindex(columns=INDEX_COLUMNS)
    atomic_write(cache_dir / f"shard_{shard:05d}.npy", lambda fh: np.save(fh, images))
    atomic_write(cache_dir / f"shard_{shard:05d}.csv", lambda fh: index.to_csv(fh, index=False))


def completed_shards(cache_dir: str | Path) -> list[int]:
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in cache_dir.iterdir() if (m := _SHARD.match(p.name)))


def remove_stray_temporaries(cache_dir: str | Path) -> int:
    """Delete the leftovers of a killed writer (their shard will be redone)."""
    cache_dir = Path(cache_dir)
    stray = list(cache_dir.glob(".shard_*.tmp*")) + list(cache_dir.glob(".cache.json.tmp*"))
    for p in stray:
        p.unlink(missing_ok=True)
    return len(stray)


def read_index(cache_dir: str | Path) -> pd.DataFrame:
    """The index of every complete shard, with a ``shard`` column; empty when there is none.

    One row per key: the newest shard's (a ``retry_failed`` preprocessing run writes a new
    entry for a file that was missing or unreadable before; shards only ever grow).
    """
    cache_dir = Path(cache_dir)
    frames = []
    for shard in completed_shards(cache_dir):
        frame = pd.read_csv(
            cache_dir / f"shard_{shard:05d}.csv",
            dtype={"key": str, "status": str, "source": str, "fallback": str, "error": str},
            keep_default_na=False,  # an empty fallback/error is "", not NaN ...
            na_values={c: [""] for c in ["det_score", *LANDMARK_COLUMNS]},  # ... a score is
        )
        frame = frame.astype({c: "float64" for c in ["det_score", *LANDMARK_COLUMNS]})
        frame["detected"] = frame["detected"].astype(str) == "True"
        frame["shard"] = shard
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*INDEX_COLUMNS, "shard"])
    index = pd.concat(frames, ignore_index=True).drop_duplicates("key", keep="last")
    return index.reset_index(drop=True).astype({"offset": "int64", "shard": "int64"})


class FaceCache:
    """Read-only view of a cache directory: ``cache[i]`` is face i of ``cache.index`` (ok rows).

    The shard memmaps open lazily on first access and are not pickled, so each DataLoader
    worker (or DDP process) opens its own: no file handles cross a fork or a spawn.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        meta = read_manifest(self.cache_dir)
        if meta is None:
            raise CacheError(f"no face cache at {self.cache_dir} (run the preprocessing first)")
        #: The settings the faces were made with (``cache.json``).
        self.settings: dict[str, Any] = meta["settings"]
        self.size = int(self.settings["size"])
        self.source = str(self.settings["source"])
        index = read_index(self.cache_dir)
        if not index["key"].is_unique:
            raise CacheError(f"{self.cache_dir}: a key appears in two shards")
        self.all_rows = index.set_index("key", drop=False)
        self.index = self.all_rows[self.all_rows["status"] == "ok"]
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def face(self, shard: int, offset: int) -> np.ndarray:
        """The S x S x 3 uint8 face stored at (shard, offset), read through a memmap."""
        arr = self._maps.get(shard)
        if arr is None:
            arr = np.load(self.cache_dir / f"shard_{shard:05d}.npy", mmap_mode="r")
            self._maps[shard] = arr
        return np.array(arr[offset])

    def lookup(self, keys: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(shard, offset) arrays for keys that are all ok in the cache (KeyError otherwise)."""
        rows = self.index.loc[keys]
        return rows["shard"].to_numpy(), rows["offset"].to_numpy()

    def __getitem__(self, i: int) -> np.ndarray:
        row = self.index.iloc[i]
        return self.face(int(row["shard"]), int(row["offset"]))
