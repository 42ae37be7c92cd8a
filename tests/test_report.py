"""report.py: the printed table."""

from __future__ import annotations

import pytest

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


def test_the_products_of_two_activations_are_one_line():
    """A transformer's attention MatMuls (two per layer, no weight): one line naming them
    and their count, not one per node (48 lines for a 24-layer decoder)."""
    from onnx_obc.skips import TWO_ACTIVATIONS

    skipped = [Skipped(f"l{i}/{m}", "MatMul", TWO_ACTIVATIONS, f"l{i}/{m}.in")
               for i in range(3) for m in ("scores", "mix")] + [
        Skipped("emb", "Gather", "no layer kind", "table")]
    r = Report(model="m.onnx", output=None, config={}, device="cpu", calibration={},
               skipped=skipped)
    lines = r.table().splitlines()
    start = lines.index("left uncompressed (7):")
    assert lines[start + 1] == ("  l0/scores, l0/mix, l1/scores, l1/mix, l2/scores, l2/mix "
                                f"(MatMul, 6 nodes): {TWO_ACTIVATIONS}")
    assert lines[start + 2] == "  emb (Gather): no layer kind"


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


def test_the_tensorrt_placement_leaves_the_layers_reasons_to_the_json():
    """A model placed for TensorRT runs few layers on onnxruntime's integer kernels by design:
    the printed check is the count, the float ops and the hint (the reasons stay in the
    JSON); the onnxruntime placement prints each reason."""
    unfused = [{"node": "c", "why": "Conv c: float Conv with DequantizeLinear inputs — bias"}]
    fusion = {"layers": 2, "integer": 1, "kernels": {"QLinearConv": 1}, "unfused": unfused,
              "float_line": "float ops on dequantized activations: Conv 1",
              "nbits_line": "1 MatMul(s) ... run as onnxruntime's own MatMulNBits"}
    trt, ort = (Report(model="m.onnx", output=None, config={"export": {"runtime": rt}},
                       device="cpu", calibration={}, fusion=fusion)
                for rt in ("tensorrt", "onnxruntime"))
    lines = trt.table().splitlines()
    start = lines.index("onnxruntime CPU (ORT_ENABLE_ALL): 1 of 2 quantized layers run on "
                        "integer kernels (QLinearConv 1)")
    assert lines[start + 1] == "  float ops on dequantized activations: Conv 1"
    assert lines[start + 2] == "  1 MatMul(s) ... run as onnxruntime's own MatMulNBits"
    assert lines[start + 3].startswith("  (this is the TensorRT placement, each layer's reason")
    assert "Conv c: float Conv" not in trt.table() and "Conv c: float Conv" in ort.table()
    assert trt.to_dict()["fusion"]["unfused"] == unfused


def test_the_first_output_beside_the_largest_error():
    """Two outputs, neither a KV cache: the table's error is the largest over them, so the
    first output's is added on its own line; the first the largest: no line."""
    from onnx_obc.fidelity import Fidelity

    def fid(logits, other):
        return Fidelity(8, {"logits": logits, "boxes": other}, 0.99)

    models = {"dense": fid(0.0, 0.0), "compressed": fid(0.0368, 0.0749)}
    r = Report(model="m.onnx", output=None, config={}, device="cpu", calibration={},
               fidelity={"eval": models})
    lines = r.table().splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith("  compressed"))
    assert "0.0749" in lines[i]
    assert lines[i + 1] == ("  (the largest of 2 outputs' errors; the first, 'logits': dense "
                            "0.0000, compressed 0.0368; each output's in the JSON report)")
    models["compressed"] = fid(0.0749, 0.0368)
    assert not [x for x in r.table().splitlines() if x.startswith("  (")]


def test_a_decoders_kv_cache_outputs_are_aside_in_the_table_and_json():
    """A decoder exported with its KV cache: the table's error is the logits' (the cache's
    larger error aside), the line beneath says so; the JSON keeps every output's error and
    names those aside; a cache output ranked first by error changes nothing."""
    from onnx_obc.fidelity import Fidelity

    def fid(logits, p0, p1):
        return Fidelity(8, {"logits": logits, "present.0.key": p0, "present.1.key": p1}, 0.99,
                        aside=("present.0.key", "present.1.key"))

    models = {"dense": fid(0.0, 0.0, 0.0), "compressed": fid(0.0245, 0.0548, 0.0301)}
    r = Report(model="m.onnx", output=None, config={}, device="cpu", calibration={},
               fidelity={"eval": models})
    lines = r.table().splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith("  compressed"))
    assert lines[i].split()[1] == "0.0245"
    assert lines[i + 1] == ("  (the error of 'logits'; the 2 KV-cache outputs aside; each "
                            "output's in the JSON report)")
    d = r.to_dict()["fidelity"]["eval"]["compressed"]
    assert d["error"] == 0.0245 and d["outputs_aside"] == ["present.0.key", "present.1.key"]
    assert d["rel_error"]["present.0.key"] == 0.0548


@pytest.mark.parametrize("solves", ["one-shot", "the run's"])
def test_under_sequential_the_suggestion_says_to_check_it_with_a_run(solves):
    """The ranking of one-shot solves (a --sequential run): the exclude line adds that the
    layers after the excluded ones are solved again, the header how the layers were solved."""
    layers = [{"layer": n, "error": e, "share": e * e / 0.0206} for n, e in
              (("a", 0.14), ("b", 0.02), ("c", 0.01))]
    r = Report(model="m.onnx", output=None, config={}, device="cpu", calibration={},
               sensitivity={"set": "eval", "samples": 64, "layers": layers, "exclude": ["a"],
                            "flags": "--exclude a", "solves": solves})
    table = r.table()
    note = "  exclude first: --exclude a (check it with a run: under --sequential the layers " \
           "after them are solved again)"
    assert (note in table.splitlines()) == (solves == "one-shot")
    assert ("as solved one-shot, on the dense model's inputs" in table) == (solves == "one-shot")
    assert "  exclude first: --exclude a" in table
