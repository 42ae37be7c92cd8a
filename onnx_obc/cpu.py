"""The CPU onnxruntime's integer kernels run on here, for the choices that depend on it.

saturating_cpu: on x86 without VNNI, onnxruntime's uint8 x int8 kernels sum pairs of
products in int16 (vpmaddubsw), which 8-bit weight codes against uint8 activations can
overflow; codes in [-64, 63] cannot (2 x 255 x 64 < 2^15). quant.reduce_range "auto"
(config.py) stores 8-bit weights with those 7-bit codes where this says so, for the
onnxruntime target (docs/deployment.md "Deployment: onnxruntime integer kernels")."""

from __future__ import annotations

import platform
from pathlib import Path

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # /proc/cpuinfo's names


def saturating_cpu() -> bool:
    """Whether onnxruntime's uint8 x int8 CPU kernels can saturate here: an x86 CPU without
    VNNI (or AMX), from /proc/cpuinfo's flags, else (Windows, macOS) numpy's (_numpy_vnni);
    False on other CPUs and where neither can tell."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        vnni = _numpy_vnni()
        return vnni is False
    return not flags & VNNI_FLAGS


def _numpy_vnni() -> bool | None:
    """Whether numpy's CPU dispatch found VNNI (None: it cannot say). It names AVX-512 VNNI,
    not the AVX-VNNI of Intel's client CPUs without AVX-512 (Alder Lake on), which then
    count as saturating: the reduced range costs them a little accuracy, never speed."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return None
    if not isinstance(features, dict) or "AVX512VNNI" not in features:
        return None
    return bool(features.get("AVX512VNNI") or features.get("AVXVNNI"))
