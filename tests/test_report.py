"""report.py: the printed table."""

from __future__ import annotations

from onnx_obc.layers import Skipped
from onnx_obc.report import Report


def test_the_nodes_of_one_weight_left_for_one_reason_are_one_line():
    """Basic Pitch's float CQT: 3 weights on 26 Conv nodes, one line each weight (all its
    nodes named), not 26 lines of the same reason; the count stays the nodes'."""
    why = "stem conv on the model input (1 input channel), kept float for onnxruntime"
    skipped = [Skipped(f"low{i}", "Conv", why, "Wl") for i in range(3)] + [
        Skipped("bank0", "Conv", why, "Wc"), Skipped("mm", "MatMul", "no constant weight"),
        Skipped("mm2", "MatMul", "no constant weight")]
    r = Report(model="m.onnx", output=None, config={}, device="cpu", calibration={},
               skipped=skipped)
    lines = r.table().splitlines()
    start = lines.index("left uncompressed (6):")
    assert lines[start + 1:start + 5] == [
        f"  low0, low1, low2 (Conv, 3 nodes, one weight): {why}", f"  bank0 (Conv): {why}",
        "  mm (MatMul): no constant weight", "  mm2 (MatMul): no constant weight"]


def test_the_fusion_checks_layers_of_one_reason_are_one_line():
    """A W4 conv model's 38 folded convs: one line naming three and the count, not 38; a
    layer with another reason keeps its own line; the count is the layers'."""
    why = "float Conv, weights dequantized once at load — no integer kernel takes them"
    unfused = [{"node": f"c{i}", "why": f"Conv c{i}: {why}"} for i in range(5)] + [
        {"node": "g", "why": "Gemm g: float Gemm with DequantizeLinear inputs — beta"}]
    r = Report(model="m.onnx", output=None, config={}, device="cpu", calibration={},
               fusion={"layers": 7, "integer": 1, "kernels": {"MatMulNBits": 1},
                       "unfused": unfused})
    lines = r.table().splitlines()
    start = lines.index("onnxruntime CPU (ORT_ENABLE_ALL): 1 of 7 quantized layers run on "
                        "integer kernels (MatMulNBits 1)")
    assert lines[start + 1:start + 3] == [
        f"  Conv c0, Conv c1, Conv c2 and 2 more: {why}",
        "  Gemm g: float Gemm with DequantizeLinear inputs — beta"]
