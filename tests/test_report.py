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
