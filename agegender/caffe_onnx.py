"""The original Levi-Hassner nets as an ONNX graph, built from their weight arrays without torch.

The install step (``python -m agegender.weights original``) turns the two original
caffemodels into the graph prediction runs on. With torch installed it traces the network
(:mod:`agegender.export`); without torch it builds the same graph here, node by node with
``onnx.helper``, from the arrays OpenCV reads out of the caffemodels
(:func:`agegender.caffe_io.read_caffe_params`). "The same graph" means the same input and
outputs, the same ops in the same order on the same float32 constants, and the same
metadata, so the two give the same probabilities to float rounding (tests/test_caffe_onnx.py
compares them on the sample faces) and every reader of the file (the onnxruntime classifier,
the int8 quantizer, the model card) sees no difference:

- ``input``: N x 3 x 227 x 227 float32 RGB in 0-255; ``Gather`` picks B, G, R and ``Sub``
  takes the channel means away (:class:`agegender.models.exportable.FixedInput`);
- per task, its own trunk: conv1 96 x 7 x 7 stride 4, ReLU, max-pool 3 / 2 with Caffe's
  rounding up (``ceil_mode``), LRN; conv2 256 x 5 x 5 pad 2, ReLU, pool, LRN; conv3
  384 x 3 x 3 pad 1, ReLU, pool; fc6 512, ReLU; fc7 512, ReLU; fc8 (``Gemm``, transB);
- LRN as :class:`agegender.models.exportable.BandLRN` writes it, ``x * (k + conv1x1(x^2,
  band * alpha / n)) ** -beta``: plain ``Conv``/``Pow``, which OpenCV's importer reads too;
- ``Softmax`` per task (outputs ``age``, ``gender``), after ``Div`` by the task's temperature
  when the graph is calibrated.

Also here, torch-free for the same reason: the metadata every agegender ONNX export carries
(:func:`graph_metadata`) and writing a graph with its weights in a file beside it
(:func:`write_with_weights_file`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agegender.calibration import temperatures_of
from agegender.fileio import atomic_write
from agegender.labels import load_label_set
from agegender.spec import CAFFE_FACE_SPEC, FaceSpec

#: ONNX opset: supported by onnxruntime and by OpenCV's importer.
OPSET: int = 17
#: IR version of the written files: the torch exporter's, which every supported onnxruntime
#: reads (the ``onnx`` package's newest can be ahead of the installed runtime).
IR_VERSION: int = 8
METADATA_FORMAT = "agegender.export.v1"
#: ``source`` of a graph of the original weights (what ``agegender.export`` without a
#: checkpoint writes, and what the model card recognises as the original nets).
ORIGINAL_SOURCE = "original Levi-Hassner weights"
#: The original nets' tasks, in output order.
TASKS: tuple[str, ...] = ("age", "gender")
#: Caffe's across-channel LRN of the deploy prototxt (both norm layers).
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 1.0
#: Initializers at least this large go to the weights file (the torch path's threshold).
EXTERNAL_THRESHOLD: int = 1024

#: (out channels, kernel, stride, pad) of the three convolutions.
_CONVS: dict[str, tuple[int, int, int, int]] = {
    "conv1": (96, 7, 4, 0),
    "conv2": (256, 5, 1, 2),
    "conv3": (384, 3, 1, 1),
}


def param_shapes(num_outputs: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{layer: (weight shape, bias shape)}`` of one Levi-Hassner net with ``num_outputs``
    classes, torch's layouts (conv O x I x kH x kW, inner product out x in)."""
    return {
        "conv1": ((96, 3, 7, 7), (96,)),
        "conv2": ((256, 96, 5, 5), (256,)),
        "conv3": ((384, 256, 3, 3), (384,)),
        "fc6": ((512, 384 * 7 * 7), (512,)),
        "fc7": ((512, 512), (512,)),
        "fc8": ((num_outputs, 512), (num_outputs,)),
    }


def shape_problem(
    params: Mapping[str, tuple[np.ndarray, np.ndarray]], num_outputs: int
) -> str | None:
    """The first layer whose blobs do not fit the net, as a sentence; None when all fit (a
    gender caffemodel given as the age one is named here, not by a runtime later)."""
    for name, shapes in param_shapes(num_outputs).items():
        if name not in params:
            return f"no weights for layer {name!r}"
        for what, array, expected in zip(("weight", "bias"), params[name], shapes, strict=True):
            if tuple(array.shape) != expected:
                return (
                    f"{name} {what} has shape {tuple(array.shape)} in the caffemodel, "
                    f"expected {expected}"
                )
    return None


def graph_metadata(
    tasks: Sequence[str],
    spec: FaceSpec,
    labels: Any,
    source: str,
    calibration: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """String key/values describing an exported graph's input and outputs (ONNX
    ``metadata_props``; :func:`agegender.export.export_metadata` for a torch network).
    ``labels``: a :class:`~agegender.labels.LabelSet` or a label set name; ``calibration``:
    the temperature-scaling record the graph applies (absent for an uncalibrated graph)."""
    label_set = load_label_set(labels)
    names = label_set.class_names
    return {
        "format": METADATA_FORMAT,
        "source": source,
        "input": "input: N x 3 x S x S float32, RGB, 0-255 (normalisation is in the graph)",
        "outputs": json.dumps(list(tasks)),
        "labels": json.dumps({task: list(names[task]) for task in tasks}, ensure_ascii=False),
        "label_set": json.dumps(label_set.to_config(), ensure_ascii=False),
        "face_size": str(spec.face_size),
        "resize_size": str(spec.resize_size),
        "crop_size": str(spec.crop_size),
        "input_channel_order": "RGB",
        "network_channel_order": spec.channel_order,
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "mean_image": str(spec.mean_image).lower(),
        "framing": json.dumps(spec.framing.to_config()),
        **({"calibration": json.dumps(dict(calibration))} if calibration else {}),
    }


def lrn_band(channels: int) -> np.ndarray:
    """The LRN window as a C x C x 1 x 1 convolution weight: ``alpha / n`` where channels are
    at most ``n // 2`` apart (BandLRN's constant, computed the same way in float32)."""
    index = np.arange(channels)
    band = np.abs(index[:, None] - index[None, :]) <= LRN_SIZE // 2
    weight = band.astype(np.float32) * np.float32(LRN_ALPHA / LRN_SIZE)
    return weight.reshape(channels, channels, 1, 1)


class _Graph:
    """Nodes and initializers collected in order; names as the torch exporter gives the
    weights (``net.trunks.age.conv1.weight`` ...), so both files list the same tensors."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def constant(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


def _trunk(
    g: _Graph, x: str, task: str, params: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> str:
    """One task's net, from the normalised input to fc8's logits."""
    pool = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 0, 0], "ceil_mode": 1}
    prefix = f"net.trunks.{task}"
    for layer, norm in (("conv1", "norm1"), ("conv2", "norm2"), ("conv3", None)):
        out, kernel, stride, pad = _CONVS[layer]
        weight, bias = params[layer]
        w = g.constant(f"{prefix}.{layer}.weight", weight.astype(np.float32))
        b = g.constant(f"{prefix}.{layer}.bias", bias.astype(np.float32))
        x = g.node(
            "Conv",
            [x, w, b],
            f"/{task}/{layer}",
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,
            dilations=[1, 1],
            group=1,
        )
        x = g.node("Relu", [x], f"/{task}/{layer}/relu")
        x = g.node("MaxPool", [x], f"/{task}/{layer}/pool", dilations=[1, 1], **pool)
        if norm is not None:
            square = g.node("Mul", [x, x], f"/{task}/{norm}/square")
            band = g.constant(f"{prefix}.{norm}.band", lrn_band(out))
            window = g.node(
                "Conv",
                [square, band],
                f"/{task}/{norm}/window",
                kernel_shape=[1, 1],
                strides=[1, 1],
                pads=[0, 0, 0, 0],
                dilations=[1, 1],
                group=1,
            )
            k = g.constant(f"/{task}/{norm}/k", np.array(LRN_K, np.float32))
            power = g.constant(f"/{task}/{norm}/power", np.array(-LRN_BETA, np.float32))
            scale = g.node("Add", [window, k], f"/{task}/{norm}/add")
            scale = g.node("Pow", [scale, power], f"/{task}/{norm}/pow")
            x = g.node("Mul", [x, scale], f"/{task}/{norm}")
    x = g.node("Flatten", [x], f"/{task}/flatten", axis=1)
    for layer in ("fc6", "fc7", "fc8"):
        weight, bias = params[layer]
        name = f"net.heads.{task}" if layer == "fc8" else f"{prefix}.{layer}"
        w = g.constant(f"{name}.weight", weight.astype(np.float32))
        b = g.constant(f"{name}.bias", bias.astype(np.float32))
        x = g.node("Gemm", [x, w, b], f"/{task}/{layer}", alpha=1.0, beta=1.0, transB=1)
        if layer != "fc8":
            x = g.node("Relu", [x], f"/{task}/{layer}/relu")
    return x


def levi_hassner_graph(
    params: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    source: str,
    calibration: Mapping[str, Any] | None = None,
    labels: Any = "adience8",
) -> Any:
    """The ONNX model (``onnx.ModelProto``) of the original nets, ``params[task][layer] =
    (weight, bias)`` for ``age`` and ``gender`` (torch layouts, as
    :func:`agegender.caffe_io.read_caffe_params` returns them), with :func:`graph_metadata`
    (``source`` names where the weights came from; ``calibration``: a temperature-scaling
    record, applied before each softmax). Checked with ``onnx.checker``; a blob of the wrong
    shape is a ValueError naming the layer."""
    import onnx
    from onnx import TensorProto, helper

    label_set = load_label_set(labels)
    for task in TASKS:
        if task not in params:
            raise ValueError(f"no weights for the {task} net")
        problem = shape_problem(params[task], label_set.num_classes[task])
        if problem is not None:
            raise ValueError(f"{task} net: {problem}")
    spec = CAFFE_FACE_SPEC
    crop = spec.crop_size
    g = _Graph()
    order = g.constant("net.normalize.order", np.array([2, 1, 0], dtype=np.int64))
    mean = g.constant(
        "net.normalize.mean", np.array(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    )
    x = g.node("Gather", ["input", order], "/normalize/gather", axis=1)
    x = g.node("Sub", [x, mean], "/normalize")
    temperatures = temperatures_of(calibration)
    outputs = []
    for task in TASKS:
        logits = _trunk(g, x, task, params[task])
        temperature = float(temperatures.get(task, 1.0))
        if temperature != 1.0:
            t = g.constant(f"/{task}/temperature", np.array(temperature, np.float32))
            logits = g.node("Div", [logits, t], f"/{task}/calibrated")
        g.nodes.append(helper.make_node("Softmax", [logits], [task], name=task, axis=1))
        n = label_set.num_classes[task]
        outputs.append(helper.make_tensor_value_info(task, TensorProto.FLOAT, ["N", n]))
    graph = helper.make_graph(
        g.nodes,
        "levi_hassner_original",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, crop, crop])],
        outputs,
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="agegender",
        ir_version=IR_VERSION,
    )
    model.doc_string = "agegender: " + source
    metadata = graph_metadata(TASKS, spec, label_set, source, calibration)
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def weights_path(output: str | Path) -> Path:
    """Where :func:`write_with_weights_file` puts ``output``'s weights: ``<output>.data``."""
    output = Path(output)
    return output.with_name(output.name + ".data")


def write_with_weights_file(model: Any, output: Path) -> None:
    """``output`` (the graph) and :func:`weights_path` (every initializer of at least
    :data:`EXTERNAL_THRESHOLD` bytes, ONNX external data that onnxruntime maps into memory
    instead of copying: a faster, leaner start), each through :func:`atomic_write`, the
    weights first: a graph on disk always has its weights. ``model`` is changed in place
    (its large tensors point at the file)."""
    from onnx.external_data_helper import (
        convert_model_to_external_data,
        write_external_data_tensors,
    )

    target = weights_path(output)
    with tempfile.TemporaryDirectory() as tmp:
        convert_model_to_external_data(
            model, location=target.name, size_threshold=EXTERNAL_THRESHOLD
        )
        write_external_data_tensors(model, tmp)  # clears the tensors' in-graph bytes
        with open(Path(tmp) / target.name, "rb") as written:
            atomic_write(target, lambda fh: shutil.copyfileobj(written, fh))
    graph = model.SerializeToString()
    atomic_write(output, lambda fh: fh.write(graph))
