"""Which runtime runs the network, and building the classifier for a checkpoint.

Backend resolution lives here and nowhere else: the API, predict.py, the web demo, export and
the benchmarks all call :func:`resolve_backend` (through :func:`build_classifier`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agegender.errors import SettingError
from agegender.extras import torch_available
from agegender.hardware import cpu_has_fast_bf16
from agegender.labels import load_label_set
from agegender.runtime.base import Classifier, check_precision
from agegender.runtime.measured import measured_choice
from agegender.runtime.onnx_classifier import OnnxFaceClassifier
from agegender.runtime.quantize import int8_agreement
from agegender.store import original_int8_path, original_onnx_path

#: ``backend=``: where the network (and MTCNN) run; ``auto`` resolves per run
#: (:func:`resolve_backend`).
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime")


def resolve_backend(
    backend: str = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    precision: str = "auto",
    oversample: bool = False,
    workload: str = "folder",
) -> str:
    """``torch`` or ``onnxruntime`` for these settings (:func:`choose_backend`)."""
    return choose_backend(backend, checkpoint, device, precision, oversample, workload)[0]


def choose_backend(
    backend: str = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    precision: str = "auto",
    oversample: bool = False,
    workload: str = "folder",
) -> tuple[str, str, str]:
    """(``torch`` or ``onnxruntime``, precision, why): where and how the network runs; the
    summary line prints why.

    ``auto`` (backend and precision) with the original weights on the CPU takes what the
    install step measured fastest on this machine for the ``workload`` (``folder``: highest
    throughput; ``single``: one photo, start-up included), among the exact-enough paths
    (:mod:`agegender.runtime.measured`). Without a record: onnxruntime where it gives the
    same probabilities faster and without importing torch (the CPU, fp32, single-crop, the
    original weights' exported graph cached or an ``.onnx`` checkpoint), bf16 on torch where
    the CPU has AMX and torch is installed; everything else (a GPU, over-sampling, train.py
    checkpoints) runs PyTorch. ``precision=int8`` runs an int8 ONNX graph and is never
    chosen unasked. The returned precision is ``auto`` only for torch runs it resolves per
    device.
    """
    check_precision(precision)
    if backend not in BACKENDS:
        raise SettingError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    onnx_file = checkpoint is not None and str(checkpoint).lower().endswith(".onnx")
    if precision == "int8":
        return _int8_backend(backend, checkpoint, device, oversample, onnx_file)
    if backend == "torch":
        if onnx_file:
            raise SettingError(
                f"checkpoint {checkpoint} is an ONNX export: use backend=onnxruntime"
            )
        if precision == "auto" and checkpoint is None and str(device) == "cpu":
            measured = measured_choice(workload)
            if measured is not None and measured[0] == "torch":
                return "torch", measured[1], "backend=torch, " + measured[2]
        return "torch", precision, "backend=torch"
    if backend == "onnxruntime" or onnx_file:
        problems = [
            what
            for what, bad in (
                (f"device={device}", str(device) != "cpu"),
                ("oversample=true", oversample),
                ("precision=bf16", precision == "bf16"),
                (f"checkpoint={checkpoint} (export it: python -m agegender.export)",
                 checkpoint is not None and not onnx_file),
            )
            if bad
        ]  # fmt: skip
        if problems:
            raise SettingError(
                f"backend=onnxruntime runs exported single-crop models on the CPU; "
                f"not with {', '.join(problems)} (use backend=torch)"
            )
        return "onnxruntime", precision, "an ONNX model" if onnx_file else "backend=onnxruntime"
    if str(device) != "cpu":
        return "torch", precision, f"device={device}"
    if oversample:
        return "torch", precision, "oversample=true runs on torch"
    if precision == "bf16":
        return "torch", "bf16", "precision=bf16 runs on torch"
    has_torch = torch_available()  # a core install predicts without it
    if checkpoint is None and precision == "auto":
        measured = measured_choice(workload)
        if measured is not None and (
            (measured[0] == "torch" and has_torch)
            or (measured[0] != "torch" and original_onnx_path().is_file())
        ):
            return measured
    if precision == "auto" and cpu_has_fast_bf16() and has_torch:
        # bf16 on AMX: ~2.6x faster than fp32 (the README's figures)
        return "torch", "bf16", "bf16 on this CPU's AMX tiles"
    if checkpoint is None:
        path = original_onnx_path()
        if path.is_file():
            return "onnxruntime", "fp32", "the original weights' ONNX export"
        return (
            "torch",
            precision,
            (
                f"auto took torch: {path} is missing (the install command "
                "`python -m agegender.weights original` writes it; onnxruntime is faster)"
            ),
        )
    why = "a train.py checkpoint (python -m agegender.export makes an .onnx one)"
    return "torch", precision, why


def _int8_backend(
    backend: str,
    checkpoint: str | os.PathLike[str] | None,
    device: str,
    oversample: bool,
    onnx_file: bool,
) -> tuple[str, str, str]:
    """``precision=int8``: an int8 ONNX graph on onnxruntime, or an error saying how to
    make one."""
    problems = [
        what
        for what, bad in (
            ("backend=torch", backend == "torch"),
            (f"device={device}", str(device) != "cpu"),
            ("oversample=true", oversample),
        )
        if bad
    ]
    if problems:
        raise SettingError(
            f"precision=int8 runs an int8 ONNX graph on onnxruntime on the CPU; not with "
            f"{', '.join(problems)}"
        )
    if checkpoint is None:
        return "onnxruntime", "int8", "precision=int8: the original weights' int8 graph"
    if onnx_file:
        return "onnxruntime", "int8", "precision=int8: an int8 ONNX export"
    raise SettingError(
        f"precision=int8 runs an int8 ONNX export; make one: python -m agegender.export "
        f"checkpoint={checkpoint} output=model.int8.onnx precision=int8, then predict with "
        "checkpoint=model.int8.onnx"
    )


def build_classifier(
    checkpoint: str | os.PathLike[str] | None = None,
    oversample: bool = False,
    device: str = "cpu",
    download: bool = True,
    precision: str = "fp32",
    backend: str = "torch",
    threads: int | None = None,
    labels: Any = None,
    calibration: bool = True,
    workload: str = "folder",
) -> tuple[Classifier, dict[str, Any]]:
    """The classifier for ``checkpoint`` (ours or train.py's, or an ONNX export), default the
    original weights, on ``backend`` (:func:`resolve_backend`).

    ``labels``: the label set to report (None: the checkpoint's own; another set only for
    adience8 networks, by summing bucket probabilities, see :class:`FaceClassifier`).
    ``calibration``: apply the model's stored temperature scaling (False: the network's raw
    probabilities); the classifier's ``calibration`` is the stored record either way.
    ``workload``: ``folder`` or ``single`` (one photo), for ``precision=auto``'s measured
    choice (:func:`choose_backend`).

    Raises :class:`agegender.store.WeightsNotFoundError` offline with nothing cached, and
    :class:`agegender.checkpoints.CheckpointError` for a file that is not a usable checkpoint.
    """
    backend, precision, why = choose_backend(
        backend, checkpoint, device, precision, oversample, workload
    )
    if backend == "onnxruntime":
        default = original_int8_path() if precision == "int8" else original_onnx_path()
        path = Path(checkpoint) if checkpoint else default
        if not path.is_file():
            hint = (
                ""
                if checkpoint
                else (": the install command `python -m agegender.weights original` writes it")
            )
            raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist{hint}")
        classifier = OnnxFaceClassifier(
            path, threads=threads, labels=labels, calibration=calibration
        )
        if precision == "int8" and classifier.precision != "int8":
            raise SettingError(
                f"{path} is an fp32 graph; precision=int8 needs an int8 one: python -m "
                f"agegender.export checkpoint={path} output=model.int8.onnx precision=int8"
            )
        if precision in ("fp32", "bf16") and classifier.precision == "int8":
            raise SettingError(f"{path} is an int8 graph: run it with precision=int8 or auto")
        agreement = int8_agreement(classifier.metadata)
        classifier.backend_reason = why if agreement is None else f"{why}; {agreement.line()}"
        return classifier, dict(classifier.metadata)

    # torch: deferred, so that runs on onnxruntime never import it
    from agegender.caffe_io import ensure_original_weights
    from agegender.checkpoints import calibration_of, label_set_of, load_model
    from agegender.runtime.torch_classifier import FaceClassifier

    path = Path(checkpoint) if checkpoint else ensure_original_weights(download=download)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    model, meta = load_model(path, map_location=device)
    classifier = FaceClassifier(
        model,
        oversample=oversample,
        device=device,
        precision=precision,
        model_labels=label_set_of(meta),
        labels=None if labels is None else load_label_set(labels),
        calibration=calibration_of(meta),
        calibrated=calibration,
    )
    classifier.backend_reason = why
    return classifier, meta


@contextlib.contextmanager
def torch_threads(threads: int | None, workers: int) -> Iterator[int]:
    """:func:`configure_torch_threads` for a block, restoring the count it found: library code
    run inside another program (evaluation in a test, a notebook, a training process) must
    not leave the process-wide setting changed behind its caller."""
    import torch  # deferred: only runs on the torch backend call this

    before = torch.get_num_threads()
    try:
        yield configure_torch_threads(threads, workers)
    finally:
        torch.set_num_threads(before)


def configure_torch_threads(threads: int | None, workers: int) -> int:
    """Set PyTorch's (process-wide) intra-op threads; ``None`` = CPU cores / loader threads.

    Detection runs in ``workers`` threads at once and the network in the main thread, so
    each stream gets its share of the cores instead of all of them fighting over every core
    (measured here on 2 cores: ~1.3x images/s versus torch's default of one thread per core).
    """
    import torch  # deferred: only runs on the torch backend call this

    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    torch.set_num_threads(int(threads))
    return int(threads)
