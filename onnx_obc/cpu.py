"""The CPU onnxruntime's integer kernels run on here, for the choices that depend on it.

saturating_cpu: on x86 without VNNI, onnxruntime's uint8 x int8 kernels sum pairs of
products in int16 (vpmaddubsw), which 8-bit weight codes against uint8 activations can
overflow; codes in [-64, 63] cannot (2 x 255 x 64 < 2^15). quant.reduce_range "auto"
(config.py) stores 8-bit weights with those 7-bit codes where this says so, for the
onnxruntime target (README "Deployment: onnxruntime integer kernels")."""

from __future__ import annotations

import platform
from pathlib import Path

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # /proc/cpuinfo's names


def saturating_cpu() -> bool:
    """Whether onnxruntime's uint8 x int8 CPU kernels can saturate here: an x86 CPU without
    VNNI (or AMX). False where /proc/cpuinfo cannot tell (other systems, other CPUs)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return not flags & VNNI_FLAGS
