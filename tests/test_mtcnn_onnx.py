"""MTCNN's graphs built without torch (agegender.mtcnn_onnx) are the traced ones: the reader
of facenet-pytorch's ``.pt`` files gives torch.load's tensors exactly, refuses any pickle that
names something else, and the three graphs give export_mtcnn's outputs (to 1e-6)."""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.export import export_mtcnn
from agegender.mtcnn_onnx import (
    TensorFileError,
    build_mtcnn_onnx,
    facenet_weights_dir,
    read_state_dict,
)
from agegender.onnx_session import ort_session
from agegender.store import MTCNN_ONNX_NAMES


def test_reader_gives_torch_loads_tensors() -> None:
    """facenet-pytorch's legacy-format files, name for name and bit for bit."""
    for name in ("pnet", "rnet", "onet"):
        path = facenet_weights_dir() / f"{name}.pt"
        ours = read_state_dict(path.read_bytes())
        theirs = torch.load(path, map_location="cpu", weights_only=True)
        assert list(ours) == list(theirs)
        for key, tensor in theirs.items():
            assert ours[key].dtype == np.float32
            np.testing.assert_array_equal(ours[key], tensor.numpy(), err_msg=f"{name} {key}")


@pytest.mark.parametrize("legacy", [True, False])
def test_reader_rebuilds_strided_and_offset_tensors(legacy: bool) -> None:
    """Both torch.save formats, with tensors that are views (a transpose: other strides; a
    slice: an offset into a shared storage)."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = OrderedDict(
        plain=torch.randn(3, 2, 5), transposed=base.t(), sliced=base[1:, 2:], scalar=base[0, 0]
    )
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=not legacy)
    ours = read_state_dict(buffer.getvalue())
    assert list(ours) == list(state)
    for key, tensor in state.items():
        np.testing.assert_array_equal(ours[key], tensor.numpy(), err_msg=key)


def test_reader_refuses_anything_but_tensors(tmp_path: Path) -> None:
    """A pickle naming any other callable is refused before it runs, and so is a state
    dict holding something other than tensors."""
    marker = tmp_path / "ran"

    class Touch:  # unpickled by a general unpickler, it creates the marker file
        def __reduce__(self) -> tuple:
            return (open, (str(marker), "w"))

    header = b"".join(
        pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
    )
    payload = pickle.dumps(OrderedDict(w=Touch()), protocol=2)
    with pytest.raises(TensorFileError, match="refused: the file asks for .*open"):
        read_state_dict(header + payload + pickle.dumps([], protocol=2))
    assert not marker.exists()
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2), "n": 3}, buffer)
    with pytest.raises(TensorFileError, match="other than tensors"):
        read_state_dict(buffer.getvalue())
    with pytest.raises(TensorFileError, match="not a torch.save file"):
        read_state_dict(pickle.dumps({"w": 1}))


def test_built_graphs_are_the_traced_ones(tmp_path: Path) -> None:
    """Equal outputs on random crops (P-net at two sizes: its height and width are free)."""
    traced = export_mtcnn(tmp_path / "traced")
    built = build_mtcnn_onnx(tmp_path / "built")
    assert [p.name for p in traced] == [p.name for p in built] == list(MTCNN_ONNX_NAMES)
    rng = np.random.default_rng(3)
    shapes = {"pnet.onnx": [(1, 3, 61, 83), (2, 3, 24, 17)], "rnet.onnx": [(7, 3, 24, 24)],
              "onet.onnx": [(5, 3, 48, 48), (1, 3, 48, 48)]}  # fmt: skip
    diff = 0.0
    for a, b in zip(traced, built, strict=True):
        ref, got = ort_session(a), ort_session(b)
        assert [o.name for o in ref.get_outputs()] == [o.name for o in got.get_outputs()]
        for shape in shapes[a.name]:
            x = rng.uniform(-1, 1, shape).astype(np.float32)
            for p, q in zip(ref.run(None, {"input": x}), got.run(None, {"input": x}), strict=True):
                assert p.shape == q.shape
                diff = max(diff, float(np.abs(p - q).max()))
    assert diff <= 1e-6, diff
