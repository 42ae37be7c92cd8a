"""What this machine's CPU runs onnxruntime's integer kernels with."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest


def saturates() -> bool:
    """Whether onnxruntime's uint8 x int8 kernels may saturate here: an x86 CPU without VNNI
    sums pairs of products in int16 (vpmaddubsw), so 8-bit weights with uint8 activations
    can overflow and the integer kernels' results leave fake quantization's (7-bit weights
    do not; onnxruntime's `reduce_range`, README "Deployment")."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


NEEDS_VNNI = pytest.mark.skipif(saturates(), reason=(
    "x86 without VNNI: onnxruntime's u8s8 integer kernels saturate (int16 pair sums), "
    "so integer-kernel results differ from fake quantization"))
