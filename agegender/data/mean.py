"""The per-pixel mean image of a set of cached faces: Caffe's ``compute_image_mean``.

The paper's training prototxt subtracts ``mean.binaryproto``, the per-pixel, per-channel mean
of the fold's 256 x 256 training images. This computes the same from the face cache, for the
training split only (a mean over validation or test faces would leak them into training).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from agegender.data.cache import FaceCache

#: Faces summed at once: bounds memory (64 x 256 x 256 x 3 bytes = 12.6 MB of uint8).
CHUNK: int = 64


def compute_image_mean(
    cache: FaceCache, keys: pd.Series | Iterable[str], chunk: int = CHUNK
) -> torch.Tensor:
    """Mean over the faces of ``keys`` (one term per key given, repeats included, as the
    training set has them): float32 tensor 3 x S x S, RGB, pixel units [0, 255].

    Streams over the memmapped shards (faces sorted by shard and offset so reads are
    sequential), summing ``chunk`` faces at a time in float64; the faces are never all in
    memory. Float64 sums are exact for any realistic count (< 2^53 / 255 faces).
    """
    keys = pd.Series(list(keys) if not isinstance(keys, pd.Series) else keys, dtype=str)
    if keys.empty:
        raise ValueError("no faces to average: the split is empty")
    shard, offset = cache.lookup(keys)
    order = np.lexsort((offset, shard))
    size = cache.size
    total = np.zeros((size, size, 3), dtype=np.float64)
    buffer = np.empty((chunk, size, size, 3), dtype=np.uint8)
    for start in range(0, len(order), chunk):
        batch = order[start : start + chunk]
        for j, i in enumerate(batch):
            buffer[j] = cache.face(int(shard[i]), int(offset[i]))
        total += buffer[: len(batch)].sum(axis=0, dtype=np.float64)
    mean = total / len(order)
    return torch.from_numpy(mean.transpose(2, 0, 1).astype(np.float32))
