"""The onnxruntime placement plan: Add / Mul nodes between float ops, connected to no
integer layer ("islands", e.g. hardswish's x * relu6(x + 3) between per-channel affine ops),
stay float; those next to a layer keep their integer kernels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnx_obc.export import build, ortplan
from onnx_obc.layers import find_layers

from .. import builders as b
from . import helpers as h
from .test_onnxruntime import compressed, optimized_ops, rel, run


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def hardswish_cnn(seed: int = 0) -> onnx.ModelProto:
    """PP-OCRv4's backbone block in small: Conv -> per-channel Mul / Add (constants) ->
    hardswish as x * Clip(x + 3, 0, 6) / 6 -> Conv -> swish (Sigmoid, Mul) -> pool -> Gemm.

        x [N, 4, 6, 6] --c1--> *s +t = a --hardswish: Mul(a, Clip(a + 3)) "hsmul" / 6-->
          --c2--> c2 * Sigmoid(c2) "swmul" --GlobalAveragePool, Flatten--> fc -> y [N, 5]
    """
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("Mul", ["c1", "s"], ["m"], name="affine_mul"),
             helper.make_node("Add", ["m", "t"], ["a"], name="affine_add"),
             helper.make_node("Add", ["a", "three"], ["a3"], name="plus3"),
             helper.make_node("Clip", ["a3", "zero", "six"], ["cl"], name="relu6"),
             helper.make_node("Mul", ["a", "cl"], ["hm"], name="hsmul"),
             helper.make_node("Div", ["hm", "six"], ["hs"], name="div6"),
             helper.make_node("Conv", ["hs", "W2", "B2"], ["c2"], name="c2", pads=[1] * 4),
             helper.make_node("Sigmoid", ["c2"], ["sg"], name="sigmoid"),
             helper.make_node("Mul", ["c2", "sg"], ["sw"], name="swmul"),
             helper.make_node("GlobalAveragePool", ["sw"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1)]
    inits = [b.weight("W1", (8, 4, 3, 3), seed), b.weight("B1", (8,), seed + 1),
             b.weight("W2", (8, 8, 3, 3), seed + 2), b.weight("B2", (8,), seed + 3),
             b.weight("Wf", (5, 8), seed + 4), b.weight("bf", (5,), seed + 5),
             _const("s", rng.uniform(0.5, 2.0, (1, 8, 1, 1))),
             _const("t", rng.normal(0, 0.5, (1, 8, 1, 1))),
             _const("three", 3.0), _const("zero", 0.0), _const("six", 6.0)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 6, 6])], [b.vi("y", [b.BATCH, 5])], inits)


def _index(model: onnx.ModelProto) -> dict[str, int]:
    return {n.name: i for i, n in enumerate(model.graph.node)}


def test_islands_stay_float_and_anchored_nodes_stay_integer(monkeypatch) -> None:
    model = hardswish_cnn()
    layers = find_layers(model)[0]
    at = _index(model)
    p = ortplan.plan(model, ortplan.layer_nodes(model, layers))
    assert [model.graph.node[i].name for i in p.islands] == ["hsmul"]
    assert at["hsmul"] not in p.roles
    assert {"a", "cl", "hm"}.isdisjoint(p.tensors)  # no Q/DQ around the island
    # the swish reads c2 (a layer's output), the pool feeds fc: they stay integer
    assert {p.roles[at[n]] for n in ("sigmoid", "swmul", "gap")} == {"compute"}
    assert {"hs", "c2", "sg", "sw", "p", "f"} <= set(p.tensors)
    monkeypatch.setattr(ortplan, "INTEGER_ISLANDS", True)
    old = ortplan.plan(model, ortplan.layer_nodes(model, layers))
    assert old.islands == [] and old.roles[at["hsmul"]] == "compute"
    assert {"a", "cl", "hm"} <= set(old.tensors)


def test_islands_fused_graph(monkeypatch) -> None:
    """Same layers on integer kernels with and without the islands; without them one
    QLinearMul and its three Q (and DQ) fewer, and the result still runs like its own QDQ
    graph executed in float."""
    model = hardswish_cnn()
    new, feed, layers = compressed(model)
    monkeypatch.setattr(ortplan, "INTEGER_ISLANDS", True)
    old, _, _ = compressed(model)
    ops_new, ops_old = optimized_ops(new), optimized_ops(old)
    for k in ("QLinearConv", "QGemm", "QLinearSigmoid", "QLinearGlobalAveragePool"):
        assert ops_new[k] == ops_old[k] >= 1, (k, ops_new, ops_old)
    assert (ops_new["QLinearMul"], ops_old["QLinearMul"]) == (1, 2)
    q_new = Counter(n.op_type for n in new.graph.node)["QuantizeLinear"]
    q_old = Counter(n.op_type for n in old.graph.node)["QuantizeLinear"]
    assert q_new == q_old - 3
    fused = run(new, feed, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    fake = run(new, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert rel(fused, fake) <= 0.02
    ref = run(build(model, layers, h.solutions(model, layers, bits=8)), feed,
              ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert rel(fused, ref) <= 0.05


@pytest.mark.parametrize("builder", [b.mlp, b.cnn])
def test_models_without_islands_are_unchanged(builder, monkeypatch) -> None:
    model = builder()
    layers = find_layers(model)[0]
    new = ortplan.plan(model, ortplan.layer_nodes(model, layers))
    monkeypatch.setattr(ortplan, "INTEGER_ISLANDS", True)
    old = ortplan.plan(model, ortplan.layer_nodes(model, layers))
    assert (new.roles, new.tensors, new.islands) == (old.roles, old.tensors, [])


def test_a_float_gate_product_stays_float_after_the_fold(monkeypatch) -> None:
    """After the fold, hardswish is one HardSwish(c1) right on a layer's output: float (no
    integer kernel), its output quantized for c2. Where it stays c1 * HardSigmoid(c1) (an
    opset the converter cannot raise), no island any more, but its gate has no integer
    kernel, so the product stays float (the rule INTEGER_FLOAT_GATES); the swish
    c2 * Sigmoid(c2) (QLinearSigmoid) stays integer either way."""
    import onnx_obc.fold as fold_mod
    from onnx_obc.fold import fold

    model, done = fold(hardswish_cnn())
    assert done.hardswish == done.hardswish_ops == 1
    hsw = next(i for i, n in enumerate(model.graph.node) if n.op_type == "HardSwish")
    p = ortplan.plan(model, ortplan.layer_nodes(model, find_layers(model)[0]))
    assert hsw not in p.roles and p.roles[_index(model)["swmul"]] == "compute"
    assert model.graph.node[hsw].output[0] in p.tensors and model.graph.node[hsw].input[0] in (
        p.tensors)  # c1's output and c2's input: integer kernels on both sides
    monkeypatch.setattr(fold_mod, "hardswish_pairs", lambda graph, outputs: [])
    model, done = fold(hardswish_cnn())
    assert done.hardswish == 1 and dict(done.after) == {"Mul": 1, "Add": 1}
    layers = find_layers(model)[0]
    gate = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Mul"
                and any(model.graph.node[j].op_type == "HardSigmoid" and
                        model.graph.node[j].output[0] in n.input
                        for j in range(len(model.graph.node))))
    swmul = _index(model)["swmul"]
    p = ortplan.plan(model, ortplan.layer_nodes(model, layers))
    assert gate not in p.roles and gate in p.islands and p.roles[swmul] == "compute"
    assert model.graph.node[gate].output[0] in p.tensors  # the next Conv's input, quantized
    monkeypatch.setattr(ortplan, "INTEGER_FLOAT_GATES", True)
    old = ortplan.plan(model, ortplan.layer_nodes(model, layers))
    assert old.roles[gate] == "compute"
    hs = next(n.output[0] for n in model.graph.node if n.op_type == "HardSigmoid")
    assert hs in old.tensors and hs not in p.tensors  # the gate's own Q, gone


def c2f_cnn(seed: int = 0, split_to_output: bool = False) -> onnx.ModelProto:
    """YOLOv8's C2f block in small: a Conv's output split in two channel halves, one through a
    bottleneck Conv with a residual Add, all three concatenated into the next Conv.

        x [N, 3, 8, 8] --c1--> a [N, 8] --Split--> s0, s1 [N, 4]
        s1 --c2--> b; r = s1 + b; Concat(s0, s1, r) --c3--> GlobalAveragePool, Flatten --fc--> y
    split_to_output: s0 is also a graph output (the Split then cannot run on the codes)."""
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Split", ["a", "sizes"], ["s0", "s1"], name="split", axis=1),
             helper.make_node("Conv", ["s1", "W2", "B2"], ["bo"], name="c2", pads=[1] * 4),
             helper.make_node("Add", ["s1", "bo"], ["r"], name="residual"),
             helper.make_node("Concat", ["s0", "s1", "r"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "W3", "B3"], ["c3"], name="c3"),
             helper.make_node("GlobalAveragePool", ["c3"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1)]
    inits = [b.weight("W1", (8, 3, 3, 3), seed), b.weight("B1", (8,), seed + 1),
             b.weight("W2", (4, 4, 3, 3), seed + 2), b.weight("B2", (4,), seed + 3),
             b.weight("W3", (8, 12, 1, 1), seed + 4), b.weight("B3", (8,), seed + 5),
             b.weight("Wf", (5, 8), seed + 6), b.weight("bf", (5,), seed + 7),
             numpy_helper.from_array(np.array([4, 4], np.int64), "sizes")]
    outs = [b.vi("y", [b.BATCH, 5])] + ([b.vi("s0", [b.BATCH, 4, 8, 8])] if split_to_output
                                        else [])
    return b.make(nodes, [b.vi("x", [b.BATCH, 3, 8, 8])], outs, inits)


def test_split_runs_on_the_codes_of_its_input() -> None:
    """Split is data movement: both halves take the Conv output's scale and zero point."""
    model = c2f_cnn()
    layers = find_layers(model)[0]
    at = _index(model)
    p = ortplan.plan(model, ortplan.layer_nodes(model, layers))
    assert p.roles[at["split"]] == "move"
    assert p.tensors["a"] is None and p.tensors["s0"] == p.tensors["s1"] == "a"
    # a half that is a graph output keeps the Split float: each half its own range, as before
    model = c2f_cnn(split_to_output=True)
    p = ortplan.plan(model, ortplan.layer_nodes(model, find_layers(model)[0]))
    assert at["split"] not in p.roles and p.tensors["s0"] is None and p.tensors["s1"] is None


def test_split_fused_graph(monkeypatch) -> None:
    """onnxruntime runs the Split on uint8 codes (no DequantizeLinear -> Split ->
    QuantizeLinear left), with one Q / DQ pair fewer per half than when each half has its own
    range (the rule off: Split not a MOVE_OPS member), the same integer kernels, and the
    halves not rounded a second time."""
    model = c2f_cnn()
    new, feed, layers = compressed(model)
    monkeypatch.setattr(ortplan, "MOVE_OPS", tuple(o for o in ortplan.MOVE_OPS if o != "Split"))
    old, _, _ = compressed(model)
    opt_new = fusion_graph(new)
    ops_new, ops_old = Counter(n.op_type for n in opt_new.graph.node), optimized_ops(old)
    for k in ("QLinearConv", "QLinearAdd", "QLinearConcat", "QGemm"):
        assert ops_new[k] == ops_old[k] >= 1, (k, ops_new, ops_old)
    made = {o: n for n in opt_new.graph.node for o in n.output}
    split = next(n for n in opt_new.graph.node if n.op_type == "Split")
    assert made[split.input[0]].op_type != "DequantizeLinear"  # it reads codes
    assert ops_new["QuantizeLinear"] == ops_old["QuantizeLinear"] - 2
    assert ops_new["DequantizeLinear"] == ops_old["DequantizeLinear"] - 1
    fused = run(new, feed, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert rel(fused, run(new, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)) <= 0.02
    dense = run(model, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    err_new = rel(fused, dense)
    err_old = rel(run(old, feed, ort.GraphOptimizationLevel.ORT_ENABLE_ALL), dense)
    assert err_new <= 1.1 * err_old, (err_new, err_old)


def fusion_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnx_obc.export import fusion

    return fusion.optimized_graph(model)


def _branch(name: str, src: str, neg: bool) -> onnx.GraphProto:
    out = helper.make_tensor_value_info(f"{name}_o", onnx.TensorProto.FLOAT, ["a", "b", "c"])
    node = helper.make_node("Neg" if neg else "Identity", [src], [f"{name}_o"], name=name)
    return helper.make_graph([node], name, [], [out])


def if_reader_cnn() -> onnx.ModelProto:
    """x [N, 4, 8] -> c1 -> Relu -> r; r -> Transpose -> read inside If A; r -> c2 ->
    Sigmoid -> read inside If B (Silero VAD v4's LSTM and head Ifs read outer tensors)."""
    cond = numpy_helper.from_array(np.array(True), "cond_value")
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="c1", pads=[1, 1]),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["t"], name="tr", perm=[2, 0, 1]),
             helper.make_node("Constant", [], ["cond"], name="cond", value=cond),
             helper.make_node("If", ["cond"], ["ya"], name="ifA", then_branch=_branch(
                 "thenA", "t", False), else_branch=_branch("elseA", "t", True)),
             helper.make_node("Conv", ["r", "W2", "B2"], ["c2"], name="c2", pads=[1, 1]),
             helper.make_node("Sigmoid", ["c2"], ["g"], name="sig"),
             helper.make_node("If", ["cond"], ["yb"], name="ifB", then_branch=_branch(
                 "thenB", "g", False), else_branch=_branch("elseB", "g", True))]
    inits = [b.weight("W1", (6, 4, 3), 0), b.weight("B1", (6,), 1),
             b.weight("W2", (6, 6, 3), 2), b.weight("B2", (6,), 3)]
    outs = [helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, ["a", "b", "c"])
            for y in ("ya", "yb")]
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 8])], outs, inits)


def test_tensors_read_inside_a_subgraph_stay_float() -> None:
    """What an If body reads leaves the graph as an output does: no Q/DQ on it, nor on a
    Transpose's input that only feeds it (a DequantizeLinear behind such reads crashed
    onnxruntime's graph optimizer on Silero VAD v4, the process aborting); the layer
    between keeps its integer input and output."""
    model = if_reader_cnn()
    layers = find_layers(model)[0]
    p = ortplan.plan(model, ortplan.layer_nodes(model, layers))
    assert "g" not in p.tensors and "t" not in p.tensors
    assert "r" in p.tensors and "c2" in p.tensors  # c2's input and output
    sig = next(i for i, n in enumerate(model.graph.node) if n.name == "sig")
    assert sig not in p.roles or "inside an If" in p.float_out.get(sig, "")
    out, feed, _ = compressed(model)
    onnx.checker.check_model(out, full_check=True)
    assert optimized_ops(out)["QLinearConv"] == 2


def se_cnn(identity: bool) -> onnx.ModelProto:
    """A squeeze-excite block whose scaled output passes an Identity (paddle2onnx writes
    one after PP-LCNet's SE multiply) or not:

        x --c1--> c --HardSwish--> h --GlobalAveragePool--> p --se--> s --HardSigmoid--> g
        Mul(h, g) = m [--Identity--> mi] --c2--> y
    """
    last = "mi" if identity else "m"
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c"], name="c1", pads=[1] * 4),
             helper.make_node("HardSwish", ["c"], ["h"], name="hswish"),
             helper.make_node("GlobalAveragePool", ["h"], ["p"], name="gap"),
             helper.make_node("Conv", ["p", "Ws", "Bs"], ["s"], name="se"),
             helper.make_node("HardSigmoid", ["s"], ["g"], name="hsig", alpha=1 / 6),
             helper.make_node("Mul", ["h", "g"], ["m"], name="scale"),
             *([helper.make_node("Identity", ["m"], ["mi"], name="ident")] if identity else []),
             helper.make_node("Conv", [last, "W2", "B2"], ["y"], name="c2")]
    inits = [b.weight("W1", (8, 4, 3, 3), 0), b.weight("B1", (8,), 1),
             b.weight("Ws", (8, 8, 1, 1), 2), b.weight("Bs", (8,), 3),
             b.weight("W2", (6, 8, 1, 1), 4), b.weight("B2", (6,), 5)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 4, 6, 6])], [b.vi("y", [b.BATCH, 6, 6, 6])],
                  inits)


def test_an_identity_does_not_leave_the_product_before_it_float() -> None:
    """An Identity moves data: the SE product before it keeps its integer kernel as without
    it. It had been an island (its inputs from HardSwish and HardSigmoid, ops without a
    role, and its output to the Identity: joined to no layer), so the product, its gate and
    the hardswish it reads ran in float (PP-LCNet's last two stages)."""
    plans, ops = [], []
    for identity in (False, True):
        model = se_cnn(identity)
        p = ortplan.plan(model, ortplan.layer_nodes(model, find_layers(model)[0]))
        plans.append(p)
        assert p.roles[_index(model)["scale"]] == "compute" and not p.islands
        out, _, _ = compressed(model)
        ops.append(optimized_ops(out))
    assert plans[1].roles[_index(se_cnn(True))["ident"]] == "move"
    assert plans[1].tensors["mi"] == "m"  # the codes of its input, unchanged
    assert ops[0] == ops[1]  # the same fused graph
    assert ops[1]["QLinearMul"] == 2 and ops[1]["Mul"] == 0  # the hardswish's and the SE's
