"""The record ``precision=auto`` reads: which runtime was measured fastest on this machine.

CPU flags do not predict speed (bf16 is 1.9x faster than fp32 on one AVX-512 BF16 CPU and 5x
slower on an AVX2 one; onnxruntime beats torch fp32 on some machines and not others), so the
install step measures (:mod:`agegender.runtime.measure`) and writes this record into the
cache. Reading it is cheap and imports no torch. A record made on another machine (another
CPU, core count, or runtime versions) is ignored, and so is any choice outside
:data:`AUTO_PATHS`: ``auto`` never picks int8, whatever a record says.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

from agegender.hardware import INTERESTING_FLAGS, cpu_flags, cpu_model
from agegender.store import AUTO_RECORD_ENV, auto_record_path

RECORD_FORMAT = "agegender.auto.v1"
#: The (backend, precision) paths ``auto`` may choose: the exact or exact-enough ones.
AUTO_PATHS: frozenset[tuple[str, str]] = frozenset(
    {("onnxruntime", "fp32"), ("torch", "fp32"), ("torch", "bf16")}
)
#: Workloads a record chooses for: many faces (a folder, a video) or one photo, where start-up
#: (importing torch, loading a model) outweighs throughput.
WORKLOADS: tuple[str, ...] = ("folder", "single")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What a measurement depends on: the CPU, its cores and features, the runtimes."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": [flag for flag in INTERESTING_FLAGS if flag in cpu_flags()],
        "onnxruntime": _version("onnxruntime"),
        "torch": _version("torch"),
    }


def read_record(path: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any] | None, str]:
    """(the record, "") when one for this machine is cached, else (None, why not).
    ``$AGEGENDER_AUTO_RECORD``: ``none`` ignores any record, a path names another one."""
    setting = os.environ.get(AUTO_RECORD_ENV)
    if path is None and setting is not None:
        if setting.strip().lower() in ("", "none", "off"):
            return None, f"{AUTO_RECORD_ENV}={setting}: the measurement is not used"
        path = setting
    path = Path(path) if path is not None else auto_record_path()
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no speed measurement ({path}; `python -m agegender.weights measure`)"
    except (OSError, ValueError) as exc:
        return None, f"unreadable speed measurement {path} ({exc})"
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None, f"{path} is not an agegender speed measurement"
    if record.get("machine") != machine():
        return None, f"{path} was measured on another machine or runtime versions"
    choices = record.get("choices")
    for workload in WORKLOADS:
        choice = choices.get(workload) if isinstance(choices, dict) else None
        if not isinstance(choice, dict):
            return None, f"{path} holds no choice for {workload}"
        if (choice.get("backend"), choice.get("precision")) not in AUTO_PATHS:
            return None, f"{path} holds no valid choice for {workload}"
    return record, ""


def measured_choice(workload: str) -> tuple[str, str, str] | None:
    """(backend, precision, why) this machine's record chose for ``workload``, or None."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    record, _ = read_record()
    if record is None:
        return None
    choice = record["choices"][workload]
    rates = ", ".join(
        f"{c['backend']} {c['precision']} {c['faces_per_s']:.0f} faces/s"
        + (f" start {c['start_s']:.1f} s" if workload == "single" else "")
        for c in record.get("candidates", [])
        if isinstance(c, dict) and "faces_per_s" in c and "start_s" in c
    )
    what = "one photo" if workload == "single" else "a folder"
    why = f"measured fastest here for {what} ({rates}; {record.get('measured', '?')})"
    return choice["backend"], choice["precision"], why
