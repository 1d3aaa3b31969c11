"""Every ONNX Runtime session of the project (the classifier, MTCNN's nets, export checks),
built in one place with one thread policy.

The policy: a session gets the machine's logical cores divided by the number of sessions
that run at the same time (``parallel``). onnxruntime's own default counts physical cores,
which is one on this project's 2-vCPU machines and left half of the CPU idle; the classifier
runs alone in the main thread (``parallel=1``), MTCNN runs in every loader thread at once
(``parallel`` = the loader threads). Idle intra-op threads sleep instead of spinning: the
sessions share the cores with decoding and each other, and a spinning thread takes a core
a loader needs (a folder of 216 photos, 2 cores: 10.75 vs 10.06 images/s).
"""

from __future__ import annotations

import os
from typing import Any

#: onnxruntime (1.29+) ships a telemetry client that looks up a Microsoft host (DNS) from a
#: plain CPU session; this documented variable switches it off (checked with strace:
#: tests/test_hostile.py). Set before onnxruntime is imported; a user's own value wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def default_threads(parallel: int = 1) -> int:
    """Intra-op threads for a session run by ``parallel`` threads at once."""
    return max(1, (os.cpu_count() or 1) // max(1, int(parallel)))


def ort_session(
    model: str | os.PathLike[str] | bytes,
    threads: int | None = None,
    parallel: int = 1,
    prepack: bool = True,
) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU for a model file or its bytes.

    ``threads``: intra-op threads (None: :func:`default_threads` of ``parallel``).
    ``prepack=False`` leaves the weights as loaded instead of copying them into the layout
    its kernels prefer: for the Levi-Hassner nets the same throughput (15.2 vs 15.3 faces/s,
    batch 32) with a session started in 60 instead of ~190 ms and ~28 MB less memory, and
    weights mapped from a file stay mapped. Raises ``ValueError`` naming the file when
    onnxruntime cannot load it.
    """
    import onnxruntime as ort  # deferred: only runs that use onnxruntime pay its import

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or default_threads(parallel))
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        name = "the model bytes" if isinstance(model, bytes) else str(model)
        raise ValueError(f"{name} is not a model onnxruntime can run: {exc}") from None
