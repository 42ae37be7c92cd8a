"""The CPU onnxruntime's integer kernels run on here (onnx_obc/cpu.saturating_cpu)."""

from __future__ import annotations

import pytest

from onnx_obc.cpu import saturating_cpu


NEEDS_VNNI = pytest.mark.skipif(saturating_cpu(), reason=(
    "x86 without VNNI: onnxruntime's u8s8 integer kernels saturate (int16 pair sums), "
    "so integer-kernel results differ from fake quantization"))
