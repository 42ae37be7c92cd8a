"""The CPU onnxruntime's integer kernels run on here (export/fusion.saturating_cpu)."""

from __future__ import annotations

import pytest

from onnx_obc.export.fusion import saturating_cpu


NEEDS_VNNI = pytest.mark.skipif(saturating_cpu(), reason=(
    "x86 without VNNI: onnxruntime's u8s8 integer kernels saturate (int16 pair sums), "
    "so integer-kernel results differ from fake quantization"))
