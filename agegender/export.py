"""Export a model to ONNX (onnxruntime, OpenCV's dnn) or TorchScript.

    python -m agegender.export output=model.onnx                    # the original weights
    python -m agegender.export checkpoint=outputs/.../last.ckpt output=model.onnx
    python -m agegender.export output=model.pt format=torchscript
    python -m agegender.export output=model.int8.onnx precision=int8 [faces=FOLDER]

The graph takes ``input``: N x 3 x S x S float32 **RGB in 0-255** (S = 227 for Levi-Hassner:
a face aligned to 256 x 256, resized to ``resize_size``, centre crop ``crop_size``) and
returns ``age`` and ``gender`` probabilities (N x classes). The network's normalisation
(mean, channel order) is inside the graph. The model's metadata (ONNX ``metadata_props``,
TorchScript ``_extra_files["agegender.json"]``) holds the label names, sizes, mean and
channel order: :func:`export_metadata`. Every export is checked before it is kept: the file
is loaded back (onnxruntime, and OpenCV for ONNX; ``torch.jit.load``) and must give the
network's probabilities to ``tolerance`` on a batch of test inputs, or nothing is written.

``precision=int8`` quantizes the checked fp32 graph (:func:`quantize_onnx`): activation
ranges from real aligned faces, and the graph is written only when its labels agree with
fp32's on held-out faces (at least ``min_agreement``, default 95%, per task).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agegender.caffe_onnx import OPSET, ORIGINAL_SOURCE, graph_metadata, write_with_weights_file
from agegender.calibration import temperatures_of
from agegender.errors import AgeGenderError, SettingError, handled
from agegender.extras import needs_torch, torch_installed
from agegender.fileio import atomic_write
from agegender.onnx_session import ort_session
from agegender.runtime.build import build_classifier
from agegender.runtime.onnx_classifier import OnnxFaceClassifier
from agegender.runtime.quantize import (
    CALIBRATION_VIEWS,
    CHECK_VIEWS,
    METHOD,
    MIN_AGREEMENT,
    SPLIT_FACES,
    Agreement,
    agreement,
    quantize,
)
from agegender.runtime.sample_faces import face_views, real_faces
from agegender.store import MTCNN_ONNX_NAMES

if TYPE_CHECKING:  # torch is imported by the functions that trace or run a torch network,
    # so that reading metadata and quantizing an ONNX graph work where torch is not installed
    import torch
    from torch import nn

    from agegender.models.exportable import ExportableNet
#: Formats and the suffix each is written with by default.
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt"}
#: Largest probability difference an export may have from the network it came from.
TOLERANCE: float = 1e-4


class ExportError(AgeGenderError, RuntimeError):
    """The exported file does not reproduce the network (nothing was written)."""


def export_metadata(
    net: ExportableNet,
    labels: Any,
    source: str,
    calibration: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """String key/values describing the graph's input and outputs (ONNX metadata_props).
    ``labels``: the network's :class:`~agegender.labels.LabelSet` (or a label set name);
    ``calibration``: the temperature-scaling record the graph applies (key ``calibration``,
    JSON; absent for an uncalibrated graph)."""
    return graph_metadata(net.tasks, net.face_spec, labels, source, calibration)


def check_inputs(spec_crop: int, n: int = 5, seed: int = 0) -> torch.Tensor:
    """Test inputs for the built-in check: smooth random images in 0-255 (face-like value
    ranges; pure noise would sit in one class and hide differences)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g) * 255
    return nn.functional.interpolate(coarse, size=(spec_crop, spec_crop), mode="bilinear")


def _max_diff(outputs: list[np.ndarray], reference: tuple[torch.Tensor, ...]) -> float:
    return max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outputs, reference, strict=True))


def run_onnx(path: str | os.PathLike[str], x: np.ndarray, runtime: str) -> list[np.ndarray]:
    """Probabilities of an exported ONNX file for ``x`` in ``onnxruntime`` or ``opencv``."""
    if runtime == "onnxruntime":
        return ort_session(path).run(None, {"input": x})
    if runtime == "opencv":
        import cv2

        dnn = cv2.dnn.readNetFromONNX(str(path))
        dnn.setInput(x)
        names = [o.name for o in _onnx_outputs(path)]
        return list(dnn.forward(names))
    raise ValueError(f"runtime must be onnxruntime or opencv, got {runtime!r}")


def _onnx_outputs(path: str | os.PathLike[str]) -> list[Any]:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.output)


def export_onnx(
    net: ExportableNet,
    output: str | os.PathLike[str],
    metadata: Mapping[str, str],
    tolerance: float = TOLERANCE,
    weights_file: bool = False,
) -> dict[str, float]:
    """Write ``net`` as ONNX with a dynamic batch axis; returns the check's max differences
    per runtime. Uses the TorchScript-based exporter (``dynamo=False``): its graph of plain
    Conv/Gather/LRN-free ops is what OpenCV's importer reads.

    ``weights_file``: the weights go to ``<output>.data`` beside the graph
    (:func:`agegender.caffe_onnx.weights_path`) (ONNX external
    data), which onnxruntime maps into memory instead of copying out of the parsed file:
    the install step's layout, measured to start a session faster and with less memory."""
    import onnx
    import torch

    crop = net.face_spec.crop_size
    x = check_inputs(crop)
    with torch.no_grad():
        reference = net(x)
    with tempfile.TemporaryDirectory() as tmp:
        model = _to_onnx(net, x, list(net.tasks), {0: "N"})
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.doc_string = "agegender: " + metadata.get("source", "")
        onnx.checker.check_model(model)
        data = model.SerializeToString()
        final = Path(tmp) / "checked.onnx"
        final.write_bytes(data)
        diffs = {}
        for runtime in ("onnxruntime", "opencv"):
            # two batch sizes: the dynamic axis must work, not only the traced size
            for batch in (x, x[:1]):
                try:
                    outputs = run_onnx(final, batch.numpy(), runtime)
                except Exception as exc:  # noqa: BLE001 - any runtime failure refuses the file
                    first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
                    raise ExportError(
                        f"{output} not written: {runtime} cannot run it "
                        f"({type(exc).__name__}: {first})"
                    ) from exc
                diff = _max_diff(outputs, tuple(r[: len(batch)] for r in reference))
                diffs[runtime] = max(diffs.get(runtime, 0.0), diff)
        _check(diffs, tolerance, output)
    if weights_file:
        write_with_weights_file(model, Path(output))
    else:
        atomic_write(Path(output), lambda fh: fh.write(data))
    return diffs


def _to_onnx(net: nn.Module, x: torch.Tensor, outputs: list[str], axes: dict[int, str]) -> Any:
    """``net`` traced on ``x`` as an ONNX model: input ``input`` (dynamic ``axes``), the
    given output names (dynamic batch). The legacy TorchScript-based exporter on purpose:
    OpenCV 4.14's importer crashed (the process died) on the torch.export-based exporter's
    graph of the Levi-Hassner net."""
    import onnx
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                net,
                (x,),
                str(raw),
                input_names=["input"],
                output_names=outputs,
                dynamic_axes={"input": axes, **{o: {0: "N"} for o in outputs}},
                opset_version=OPSET,
                dynamo=False,
            )
        model = onnx.load(str(raw))
    _materialise_shared_initializers(model)
    return model


def _materialise_shared_initializers(model: Any) -> None:
    """Give every weight its own initializer. The exporter stores equal tensors once and
    feeds the others through ``Identity`` nodes (a fresh net's biases are all equal), and
    OpenCV's importer then returned NaN for batches of more than one face."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            array = numpy_helper.to_array(initializers[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def export_torchscript(
    net: ExportableNet,
    output: str | os.PathLike[str],
    metadata: Mapping[str, str],
    tolerance: float = TOLERANCE,
) -> dict[str, float]:
    """Write ``net`` traced as TorchScript (metadata in ``_extra_files["agegender.json"]``)."""
    import torch

    crop = net.face_spec.crop_size
    x = check_inputs(crop)
    with torch.no_grad():
        reference = net(x)
    extra = {"agegender.json": json.dumps(dict(metadata), indent=2)}
    # TorchScript is deprecated in favour of torch.export, but it is what users of this
    # issue's deployments load (torch.jit.load, LibTorch): asked for, so its warnings go.
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.no_grad():
            traced = torch.jit.trace(net, (x,), check_trace=False)
        path = Path(tmp) / "model.pt"
        torch.jit.save(traced, str(path), _extra_files=extra)
        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            diff = max(
                _max_diff([o.numpy() for o in loaded(b)], tuple(r[: len(b)] for r in reference))
                for b in (x, x[:1])
            )
        diffs = {"torchscript": diff}
        _check(diffs, tolerance, output)
        data = path.read_bytes()
    atomic_write(Path(output), lambda fh: fh.write(data))
    return diffs


def _check(diffs: Mapping[str, float], tolerance: float, output: str | os.PathLike[str]) -> None:
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        detail = ", ".join(f"{k} {v:.2e}" for k, v in bad.items())
        raise ExportError(
            f"{output} not written: the export differs from the network by {detail} "
            f"(tolerance {tolerance:g})"
        )


def export_model(
    output: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    format: str | None = None,
    tolerance: float = TOLERANCE,
    download: bool = True,
    calibration: bool = True,
    weights_file: bool = False,
) -> dict[str, float]:
    """Export ``checkpoint`` (None: the original weights) to ``output``; ``format`` from the
    suffix when None (``.onnx`` -> onnx, else torchscript). Returns the check's differences.
    ``weights_file``: ONNX weights in ``<output>.data`` (:func:`export_onnx`).
    A checkpoint with temperature scaling exports with it in the graph (its record in the
    metadata); ``calibration=False`` exports the raw network instead."""
    if format is None:
        format = "onnx" if str(output).lower().endswith(".onnx") else "torchscript"
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    if format == "onnx" and checkpoint is None and not torch_installed():
        return _export_original_without_torch(output, tolerance, download, weights_file)
    from agegender.models.exportable import ExportableNet  # torch: deferred, as above

    classifier, meta = build_classifier(
        checkpoint, download=download, precision="fp32", calibration=calibration
    )
    record = classifier.calibration if classifier.calibrated else None
    net = ExportableNet(classifier.model, temperatures_of(record))
    source = str(checkpoint) if checkpoint else ORIGINAL_SOURCE
    metadata = export_metadata(net, classifier.labels, source, record)
    if format == "onnx":
        return export_onnx(net, output, metadata, tolerance, weights_file)
    return export_torchscript(net, output, metadata, tolerance)


def _export_original_without_torch(
    output: str | os.PathLike[str], tolerance: float, download: bool, weights_file: bool
) -> dict[str, float]:
    """The original nets' graph where torch is not installed: built from the caffemodels
    (:func:`agegender.caffe_io.write_original_onnx`, the torch export's graph to float
    rounding) and checked against OpenCV's run of the Caffe nets instead of torch's."""
    from agegender.caffe_io import original_caffemodels, write_original_onnx

    age, gender, _ = original_caffemodels(download, None, None, None)
    diff = write_original_onnx(age, gender, Path(output), tolerance, weights_file)
    return {"opencv (caffe)": diff}


def torch_needed_for(options: Mapping[str, str], checkpoint: str | None) -> str | None:
    """What in an export command needs torch (None: nothing; the original nets' ONNX graph
    and quantizing an ``.onnx`` file are built without it)."""
    if options.get("format") == "torchscript" or (
        options.get("format") is None and not options.get("output", "").lower().endswith(".onnx")
    ):
        return "format=torchscript"
    if checkpoint is not None and not checkpoint.lower().endswith(".onnx"):
        return f"exporting checkpoint={checkpoint}"
    return None


def quantize_onnx(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    faces: str | os.PathLike[str] | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> Agreement:
    """Write the int8 version of the fp32 agegender export ``source`` to ``output`` and
    return how its labels agree with fp32's.

    Calibration and check use real aligned faces (``faces``: a folder of photos or face
    crops; default the sample photos): with at least 8 faces, every other face calibrates
    and the rest are held out; with fewer (the four sample faces) both use the same faces
    in different random views, which the agreement line says. Raises :class:`ExportError`
    (nothing written) when a task's argmax agreement is below ``min_agreement``."""
    import onnx

    source = Path(source)
    reference = OnnxFaceClassifier(source)
    if reference.precision != "fp32":
        raise ValueError(
            f"{source} is already quantized ({reference.precision}); give an fp32 export"
        )
    spec = reference.face_spec
    real = real_faces(faces, spec.face_size, spec.framing)
    if len(real) >= SPLIT_FACES:
        calibrate, check, held_out = real[0::2], real[1::2], "other faces"
    else:
        calibrate, check, held_out = real, real, "other views of the calibration faces"

    def inputs(faces: list[np.ndarray]) -> np.ndarray:
        return np.stack([reference.preprocess(face) for face in faces])

    fp32 = onnx.load(str(source)).SerializeToString()  # with its weights file, if it has one
    data = quantize(fp32, inputs(calibrate + face_views(calibrate, CALIBRATION_VIEWS, 0)))
    result = agreement(
        source, data, inputs(check + face_views(check, CHECK_VIEWS, 1)), reference.tasks, held_out
    )
    if not result.passes(min_agreement):
        raise ExportError(
            f"{output} not written: the int8 graph's {result.line()}; below "
            f"min_agreement={min_agreement:g} (calibrate on faces like yours: faces=FOLDER)"
        )
    model = onnx.load_from_string(data)
    del model.metadata_props[:]
    record = {
        "method": METHOD,
        "calibration_faces": len(calibrate),
        "calibration_views": CALIBRATION_VIEWS,
        "faces": str(faces) if faces is not None else "the sample photos (data/samples)",
        "check": result.to_dict(),
        "min_agreement": min_agreement,
    }
    for key, value in {
        **reference.metadata,
        "precision": "int8",
        "quantization": json.dumps(record),
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    final = model.SerializeToString()
    atomic_write(Path(output), lambda fh: fh.write(final))
    return result


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of an exported file (ONNX or TorchScript)."""
    if str(path).lower().endswith(".onnx"):
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    import torch

    extra = {"agegender.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra["agegender.json"])


def _flag(value: str, key: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise SettingError(f"{key} must be true or false, got {value!r}")


USAGE = (
    "usage: python -m agegender.export [checkpoint=PATH] output=FILE [format=onnx|torchscript] "
    "[tolerance=1e-4] [calibration=true|false] [precision=fp32|int8] [faces=FOLDER] "
    f"[min_agreement={MIN_AGREEMENT}]"
)
KEYS = (
    "checkpoint", "output", "format", "tolerance", "calibration", "precision", "faces",
    "min_agreement",
)  # fmt: skip


# ValueError, FileNotFoundError: raise sites in the exporters not yet an AgeGenderError
@handled("export", builtin=(FileNotFoundError, ValueError))
def main(argv: list[str] | None = None) -> int:
    """``python -m agegender.export [checkpoint=P] output=F [format=onnx|torchscript]``.

    The ``key=value`` form of predict.py's Hydra overrides, parsed here: a few plain options
    need no config tree, and this works from any working directory. ``precision=int8``
    quantizes (:func:`quantize_onnx`); its checkpoint may be an fp32 ``.onnx`` export."""
    args = sys.argv[1:] if argv is None else argv
    options: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in KEYS:
            print(USAGE, file=sys.stderr)
            return 2
        options[key] = value
    if "output" not in options:
        raise SettingError("output=FILE is required (e.g. output=model.onnx)")
    checkpoint = options.get("checkpoint") or None
    if checkpoint in ("null", "None"):
        checkpoint = None
    precision = options.get("precision", "fp32")
    need = torch_needed_for(options, checkpoint)
    if need is not None and not torch_installed():
        raise SettingError(needs_torch(need))
    if precision not in ("fp32", "int8"):
        raise SettingError(f"precision must be fp32 or int8, got {precision!r}")
    if precision == "int8":
        line = _export_int8(options, checkpoint)
    else:
        diffs = export_model(
            options["output"],
            checkpoint,
            options.get("format"),
            float(options.get("tolerance", TOLERANCE)),
            calibration=_flag(options.get("calibration", "true"), "calibration"),
        )
        line = ", ".join(f"{k} max |dp| {v:.1e}" for k, v in diffs.items())
    print(f"export: {options['output']} ({line})")
    return 0


def _export_int8(options: Mapping[str, str], checkpoint: str | None) -> str:
    """The int8 graph of ``checkpoint`` (an fp32 ``.onnx`` export is quantized as it is;
    anything else is exported to fp32 first); returns the agreement line."""
    if options.get("format", "onnx") != "onnx":
        raise SettingError("precision=int8 writes ONNX (onnxruntime runs it), not torchscript")
    faces = options.get("faces") or None
    minimum = float(options.get("min_agreement", MIN_AGREEMENT))
    if checkpoint is not None and checkpoint.lower().endswith(".onnx"):
        return quantize_onnx(checkpoint, options["output"], faces, minimum).line()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_model(
            fp32,
            checkpoint,
            "onnx",
            float(options.get("tolerance", TOLERANCE)),
            calibration=_flag(options.get("calibration", "true"), "calibration"),
        )
        return quantize_onnx(fp32, options["output"], faces, minimum).line()


if __name__ == "__main__":
    sys.exit(main())


def export_mtcnn(folder: str | os.PathLike[str], tolerance: float = TOLERANCE) -> list[Path]:
    """MTCNN's P-, R- and O-net (facenet-pytorch's weights) as ONNX files in ``folder``
    (``pnet.onnx`` ...), for ``detector=mtcnn backend=onnxruntime``: prediction without
    torch. P-net is fully convolutional (dynamic height and width), R/O-net take batches of
    24 / 48 px crops. Each file is checked in onnxruntime against the torch net first."""
    import onnx
    import torch

    from agegender.faces.mtcnn_nets import load_nets

    folder = Path(folder)
    written = []
    g = torch.Generator().manual_seed(0)
    samples = (
        [torch.rand(1, 3, 61, 83, generator=g) * 2 - 1, torch.rand(1, 3, 24, 17, generator=g)],
        [torch.rand(7, 3, 24, 24, generator=g) * 2 - 1],
        [torch.rand(5, 3, 48, 48, generator=g) * 2 - 1],
    )
    for net, name, inputs in zip(load_nets("cpu"), MTCNN_ONNX_NAMES, samples, strict=True):
        x = inputs[0]
        n_out = len(net(x))
        outputs = [f"out{i}" for i in range(n_out)]
        axes = {0: "N", 2: "H", 3: "W"} if name == "pnet.onnx" else {0: "N"}
        model = _to_onnx(net, x, outputs, axes)
        onnx.checker.check_model(model)
        data = model.SerializeToString()
        session = ort_session(data)
        diff = 0.0
        for sample in inputs:
            with torch.no_grad():
                expected = net(sample)
            got = session.run(None, {"input": sample.numpy()})
            diff = max(diff, _max_diff(got, tuple(e.contiguous() for e in expected)))
        _check({f"onnxruntime ({name})": diff}, tolerance, folder / name)
        written.append(atomic_write(folder / name, lambda fh, data=data: fh.write(data)))
    return written
