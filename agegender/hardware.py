"""What this machine's CPU (or GPU) can do, for ``precision=auto`` and benchmark headers.

Machines running this project differ (some CPUs have AMX bf16 tiles, others only AVX-512 or
AVX2), so nothing here assumes: it reads the CPU flags the kernel reports. Importing this
module imports no torch (prediction's start-up time).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: Flags worth naming in a benchmark header, in order (Linux /proc/cpuinfo names).
INTERESTING_FLAGS: tuple[str, ...] = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of the first processor in /proc/cpuinfo (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware tiles (AMX), the case where bf16
    classification measured 2.6x fp32 (issue 10). AVX-512 BF16 alone only has dot-product
    instructions and AVX2 machines emulate bf16 (slower than fp32): those stay fp32."""
    return "amx_bf16" in cpu_flags()


def cpu_summary() -> str:
    """One line for benchmark output: model, cores and the flags that decide speed."""
    import os

    present = [f for f in INTERESTING_FLAGS if f in cpu_flags()]
    return (
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; features: "
        f"{' '.join(present) or 'none of ' + ' '.join(INTERESTING_FLAGS)}"
        f"; bf16 {'native (AMX)' if cpu_has_fast_bf16() else 'not native'}"
    )
