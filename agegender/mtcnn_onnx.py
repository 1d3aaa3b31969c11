"""MTCNN's three nets as ONNX graphs, built from facenet-pytorch's weight files without torch.

The default detector runs on onnxruntime from ``<cache>/mtcnn/{pnet,rnet,onet}.onnx``. With
torch installed the install step traces the nets (:func:`agegender.export.export_mtcnn`);
without it, this module reads the weights out of facenet-pytorch's ``.pt`` files and builds
the same graphs (the same ops on the same float32 arrays, checked equal to the traced ones by
tests/test_mtcnn_onnx.py) with ``onnx.helper``.

Reading a ``.pt`` file without torch, safely: a ``.pt`` is a pickle, and a general unpickler
runs whatever the file names. :class:`_StateDictUnpickler` resolves exactly three names
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``),
each mapped to a plain-data stand-in, and refuses every other one; tensors are rebuilt with
numpy from the raw storage bytes (legacy files: after the pickles; zip files: the archive's
``data/`` entries) with their offset, size and stride checked against the storage.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agegender.caffe_onnx import IR_VERSION, OPSET
from agegender.errors import AgeGenderError
from agegender.fileio import atomic_write
from agegender.onnx_session import ort_session
from agegender.store import MTCNN_ONNX_NAMES

#: The package whose wheel ships the trained MTCNN weights (never imported here).
WEIGHTS_PACKAGE = "facenet_pytorch"
#: The first pickle of a legacy (non-zip) ``torch.save`` file.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class TensorFileError(AgeGenderError, ValueError):
    """A weights file this reader refuses: another format, or an object it does not build."""


def facenet_weights_dir() -> Path:
    """``facenet_pytorch/data``, found without importing the package (its ``__init__`` pulls
    in torch and torchvision)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"MTCNN weights ship in the {WEIGHTS_PACKAGE} wheel, which is not installed: "
            "pip install facenet-pytorch==2.5.3 --no-deps"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


# -- a torch-free, class-free reader of state dicts ---------------------------------------


@dataclass(frozen=True)
class _Storage:
    """A float32 storage named by the pickle; its bytes are read after (or beside) it."""

    key: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _FloatStorage:
    """Stands for ``torch.FloatStorage`` in a persistent id (never instantiated)."""


def _rebuild_tensor(
    storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any
) -> _TensorRef:
    """Stands for ``torch._utils._rebuild_tensor_v2``: records where the tensor lies."""
    if not isinstance(storage, _Storage):
        raise TensorFileError("a tensor whose storage is not a float32 storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or int(offset) < 0 or any(s < 0 for s in (*size, *stride)):
        raise TensorFileError(f"malformed tensor: size {size}, stride {stride}")
    return _TensorRef(storage, int(offset), size, stride)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch", "FloatStorage"): _FloatStorage,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict of float32 tensors and nothing else: any other global is
    refused, so a file cannot make this reader run code."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise TensorFileError(
                f"refused: the file asks for {module}.{name} (this reader builds only float32 "
                "tensors in an OrderedDict)"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        # legacy: ('storage', type, key, location, numel, view); zip: the first five
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise TensorFileError(f"unexpected persistent id {pid!r}")
        if pid[1] is not _FloatStorage:
            raise TensorFileError("only float32 storages are read")
        if len(pid) == 6 and pid[5] is not None:
            raise TensorFileError("storage views are not supported")
        return _Storage(str(pid[2]), int(pid[4]))


def _unpickle(data: bytes | io.BytesIO) -> Any:
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return _StateDictUnpickler(stream).load()
    except TensorFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed pickle, in any of its ways
        raise TensorFileError(f"unreadable pickle ({type(exc).__name__}: {exc})") from None


def _tensor(ref: _TensorRef, storages: Mapping[str, np.ndarray]) -> np.ndarray:
    flat = storages.get(ref.storage.key)
    if flat is None:
        raise TensorFileError(f"storage {ref.storage.key!r} has no data")
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if any(n == 0 for n in ref.size):
        return np.zeros(ref.size, np.float32)
    if last >= flat.size:
        raise TensorFileError(f"a tensor reaches past its storage ({last} >= {flat.size})")
    itemsize = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :], shape=ref.size, strides=[s * itemsize for s in ref.stride]
    )
    return np.array(view, dtype=np.float32, copy=True)


def _state_dict(obj: Any, storages: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise TensorFileError("the file does not hold a state dict (names -> tensors)")
    if not all(isinstance(v, _TensorRef) for v in obj.values()):
        raise TensorFileError("the state dict holds something other than tensors")
    return {name: _tensor(ref, storages) for name, ref in obj.items()}


def read_state_dict(data: bytes) -> dict[str, np.ndarray]:
    """``{name: float32 array}`` of a ``torch.save``-d state dict (legacy or zip format),
    read without torch and without resolving any class but the three above."""
    if data[:4] == b"PK\x03\x04":
        return _read_zip(data)
    stream = io.BytesIO(data)
    if _unpickle(stream) != _LEGACY_MAGIC or _unpickle(stream) != _LEGACY_PROTOCOL:
        raise TensorFileError("not a torch.save file (no magic number)")
    info = _unpickle(stream)
    if not isinstance(info, dict) or not info.get("little_endian", False):
        raise TensorFileError("only little-endian files are read")
    obj = _unpickle(stream)
    keys = _unpickle(stream)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TensorFileError("malformed storage list")
    storages = {}
    for key in keys:
        head = stream.read(8)
        if len(head) != 8:
            raise TensorFileError("truncated storage data")
        (numel,) = struct.unpack("<q", head)
        raw = stream.read(4 * numel)
        if numel < 0 or len(raw) != 4 * numel:
            raise TensorFileError("truncated storage data")
        storages[key] = np.frombuffer(raw, dtype="<f4")
    return _state_dict(obj, storages)


def _read_zip(data: bytes) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise TensorFileError("a zip file without one data.pkl")
        root = pickles[0][: -len("data.pkl")]
        obj = _unpickle(archive.read(pickles[0]))
        storages = {
            name[len(root) + len("data/") :]: np.frombuffer(archive.read(name), dtype="<f4")
            for name in names
            if name.startswith(root + "data/")
        }
    return _state_dict(obj, storages)


# -- the graphs -----------------------------------------------------------------------------

#: Per net: its layers in order (``conv`` name, ``prelu`` name, ``pool`` (kernel, stride),
#: ``flatten`` = the W-major flatten facenet's dense layers read), its output heads
#: (layer, softmax?) and its input's spatial size (None: any, P-net is fully convolutional).
NETS: dict[str, dict[str, Any]] = {
    "pnet.onnx": {
        "layers": [
            ("conv", "conv1"), ("prelu", "prelu1"), ("pool", (2, 2)),
            ("conv", "conv2"), ("prelu", "prelu2"), ("conv", "conv3"), ("prelu", "prelu3"),
        ],
        "heads": [("conv4_2", False), ("conv4_1", True)],
        "size": None,
    },
    "rnet.onnx": {
        "layers": [
            ("conv", "conv1"), ("prelu", "prelu1"), ("pool", (3, 2)),
            ("conv", "conv2"), ("prelu", "prelu2"), ("pool", (3, 2)),
            ("conv", "conv3"), ("prelu", "prelu3"), ("flatten", None),
            ("dense", "dense4"), ("prelu", "prelu4"),
        ],
        "heads": [("dense5_2", False), ("dense5_1", True)],
        "size": 24,
    },
    "onet.onnx": {
        "layers": [
            ("conv", "conv1"), ("prelu", "prelu1"), ("pool", (3, 2)),
            ("conv", "conv2"), ("prelu", "prelu2"), ("pool", (3, 2)),
            ("conv", "conv3"), ("prelu", "prelu3"), ("pool", (2, 2)),
            ("conv", "conv4"), ("prelu", "prelu4"), ("flatten", None),
            ("dense", "dense5"), ("prelu", "prelu5"),
        ],
        "heads": [("dense6_2", False), ("dense6_3", False), ("dense6_1", True)],
        "size": 48,
    },
}  # fmt: skip


def mtcnn_graph(name: str, state: Mapping[str, np.ndarray]) -> Any:
    """The ONNX model of MTCNN's ``name`` net (``pnet.onnx`` ...) with the weights ``state``
    (facenet-pytorch's state dict as arrays): input ``input`` N x 3 x H x W, outputs
    ``out0``... in the torch net's order, as :func:`agegender.export.export_mtcnn` writes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = NETS[name]
    nodes: list[Any] = []
    initializers: list[Any] = []

    def weight(key: str, shape: tuple[int, ...] | None = None) -> str:
        if key not in state:
            raise TensorFileError(f"{name}: no tensor {key!r} in the weights")
        array = np.asarray(state[key], dtype=np.float32)
        if shape is not None:
            array = array.reshape(shape)
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), key))
        return key

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    x, spatial = "input", True
    for kind, arg in spec["layers"]:
        if kind == "conv":
            kernel = list(np.shape(state.get(f"{arg}.weight", np.zeros((0, 0, 1, 1))))[2:])
            x = node(
                "Conv",
                [x, weight(f"{arg}.weight"), weight(f"{arg}.bias")],
                f"/{arg}",
                kernel_shape=kernel,
                strides=[1, 1],
                pads=[0, 0, 0, 0],
                dilations=[1, 1],
                group=1,
            )
        elif kind == "prelu":
            slope = np.asarray(state.get(f"{arg}.weight", np.zeros(0)))
            shape = (slope.size, 1, 1) if spatial else (slope.size,)
            x = node("PRelu", [x, weight(f"{arg}.weight", shape)], f"/{arg}")
        elif kind == "pool":
            kernel, stride = arg
            x = node(
                "MaxPool",
                [x],
                f"/pool{len(nodes)}",
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[0, 0, 0, 0],
                dilations=[1, 1],
                ceil_mode=1,
            )
        elif kind == "flatten":  # the dense layer reads (N, W, H, C) order
            x = node("Transpose", [x], "/transpose", perm=[0, 3, 2, 1])
            x = node("Flatten", [x], "/flatten", axis=1)
            spatial = False
        else:  # dense
            x = node(
                "Gemm",
                [x, weight(f"{arg}.weight"), weight(f"{arg}.bias")],
                f"/{arg}",
                alpha=1.0,
                beta=1.0,
                transB=1,
            )
    outputs = []
    for i, (layer, softmax) in enumerate(spec["heads"]):
        out = f"out{i}"
        w, b = weight(f"{layer}.weight"), weight(f"{layer}.bias")
        n = int(np.shape(state[f"{layer}.weight"])[0])
        if spatial:
            head = node(
                "Conv",
                [x, w, b],
                f"/{layer}" if softmax else out,
                kernel_shape=[1, 1],
                strides=[1, 1],
                pads=[0, 0, 0, 0],
                dilations=[1, 1],
                group=1,
            )
            shape: list[Any] = ["N", n, "h", "w"]
        else:
            head = node(
                "Gemm", [x, w, b], f"/{layer}" if softmax else out, alpha=1.0, beta=1.0, transB=1
            )
            shape = ["N", n]
        if softmax:
            node("Softmax", [head], out, axis=1)
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, shape))
    side = spec["size"]
    dims: list[Any] = ["N", 3, "H", "W"] if side is None else ["N", 3, side, side]
    graph = helper.make_graph(
        nodes,
        name.removesuffix(".onnx"),
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="agegender",
        ir_version=IR_VERSION,
    )
    model.doc_string = f"agegender: MTCNN {name} from {WEIGHTS_PACKAGE}'s weights"
    onnx.checker.check_model(model)
    return model


def _check(name: str, data: bytes) -> None:
    """The graph runs on onnxruntime on a batch of two and gives finite outputs whose face
    probabilities sum to one: a wiring or shape mistake fails here, before anything is
    written (equality with the traced nets is the tests' job, where torch is)."""
    side = NETS[name]["size"] or 31
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, side, side)).astype(np.float32)
    outputs = ort_session(data).run(None, {"input": x})
    if not all(np.isfinite(o).all() and len(o) == 2 for o in outputs):
        raise TensorFileError(f"{name}: the built graph gives non-finite or mis-sized outputs")
    if not np.allclose(outputs[-1].sum(axis=1), 1.0, atol=1e-5):
        raise TensorFileError(f"{name}: the built graph's probabilities do not sum to one")


def build_mtcnn_onnx(folder: str | Path, weights: str | Path | None = None) -> list[Path]:
    """MTCNN's P-, R- and O-net as ONNX files in ``folder`` (``pnet.onnx`` ...), from
    facenet-pytorch's ``{pnet,rnet,onet}.pt`` in ``weights`` (default: the installed
    package's ``data/``), without torch. Each graph is checked on onnxruntime first."""
    folder = Path(folder)
    source = facenet_weights_dir() if weights is None else Path(weights)
    written = []
    for name in MTCNN_ONNX_NAMES:
        path = source / name.replace(".onnx", ".pt")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise FileNotFoundError(f"MTCNN weights not readable: {path} ({exc})") from None
        data = mtcnn_graph(name, read_state_dict(raw)).SerializeToString()
        _check(name, data)
        written.append(atomic_write(folder / name, lambda fh, data=data: fh.write(data)))
    return written
