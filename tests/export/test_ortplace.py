"""The onnxruntime target's grid for an integer Concat's output (ortplace.JOIN): the finest of
its inputs' grids that holds every input's range, where one does (onnxruntime's QLinearConcat
then copies that input's codes), else a grid of its own; the inputs keep theirs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnx_obc.export import ortplace, ortplan
from onnx_obc.layers import find_layers

from .. import builders as b
from ..cpu import NEEDS_VNNI
from .test_onnxruntime import compressed, optimized_ops, rel, run
from .test_ortplan import c2f_cnn


def two_branch_cnn() -> onnx.ModelProto:
    """x [N, 3, 8, 8] --c1--> a, x --c2--> b [N, 4] each; Concat(a, b) --c3--> y [N, 6]."""
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Conv", ["x", "W2", "B2"], ["b"], name="c2", pads=[1] * 4),
             helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "W3", "B3"], ["y"], name="c3")]
    inits = [b.weight("W1", (4, 3, 3, 3), 0), b.weight("B1", (4,), 1),
             b.weight("W2", (4, 3, 3, 3), 2), b.weight("B2", (4,), 3),
             b.weight("W3", (6, 8, 1, 1), 4), b.weight("B3", (6,), 5)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 3, 8, 8])], [b.vi("y", [b.BATCH, 6, 8, 8])],
                  inits)


def grids(model: onnx.ModelProto) -> dict[str, tuple[float, int]]:
    """Quantized tensor -> (scale, zero point) of its QuantizeLinear."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    made = {o: n for n in model.graph.node for o in n.output}

    def value(name: str) -> np.ndarray:
        n = made.get(name)
        return inits[name] if n is None else onnx.numpy_helper.to_array(n.attribute[0].t)

    return {n.input[0]: (float(value(n.input[1])), int(value(n.input[2])))
            for n in model.graph.node if n.op_type == "QuantizeLinear"}


@NEEDS_VNNI
def test_the_built_concat_runs_on_an_inputs_grid() -> None:
    """Built and fused: the Concat's output is quantized on one input's grid (here b's,
    min-max ranges: b's holds a's), onnxruntime runs a QLinearConcat, and the fused model
    matches its QDQ graph run in float."""
    out, feed, _ = compressed(two_branch_cnn())
    g = grids(out)
    assert g["cat"] == g["b"] != g["a"]
    assert optimized_ops(out)["QLinearConcat"] == 1
    fused = run(out, feed, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert rel(fused, run(out, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)) <= 0.02


def _c2f_params(r_range: tuple[float, float], join: bool = True
                ) -> dict[str, ortplace.QParams]:
    """YOLOv8's C2f: Concat(s0, s1, r), the halves s0 / s1 on the Split input a's grid
    (range [-1, 3]); the Concat's own range [-1.2, 3.5]."""
    model = c2f_cnn()
    p = ortplan.plan(model, ortplan.layer_nodes(model, find_layers(model)[0]))
    ranges = {t: (-1.0, 3.0) for t in p.tensors}
    ranges.update(r=r_range, cat=(-1.2, 3.5))
    saved, ortplace.JOIN = ortplace.JOIN, join
    try:
        return ortplace._params(model.graph, p, ranges, "u8")
    finally:
        ortplace.JOIN = saved


def test_the_output_takes_the_finest_input_grid_that_holds_them_all() -> None:
    q = lambda lo, hi: ortplace.qparams(lo, hi, "u8")  # noqa: E731
    inside = _c2f_params((-0.5, 2.0))  # a's grid holds r's range, r's does not hold a's
    assert inside["cat"] == inside["s0"] == inside["a"] == q(-1.0, 3.0)
    assert inside["r"] == q(-0.5, 2.0)  # the inputs keep their grids
    wider = _c2f_params((-1.0, 6.0))  # only r's holds every input
    assert wider["cat"] == wider["r"] == q(-1.0, 6.0) and wider["a"] == q(-1.0, 3.0)
    apart = _c2f_params((-0.5, 6.0))  # none holds the others: the Concat's own range
    assert apart["cat"] == q(-1.2, 3.5)
    assert _c2f_params((-0.5, 2.0), join=False)["cat"] == q(-1.2, 3.5)  # JOIN off: its own


def test_within_one_step() -> None:
    """A grid holds a range it misses by less than one of its steps (a clip of a rounding's
    size), not one it misses by more."""
    u8 = np.dtype(np.uint8)
    a = ortplace.QParams(0.01, 100, u8)  # [-1.0, 1.55]
    assert ortplace._holds(a, [ortplace.QParams(0.01005, 100, u8)])  # [-1.005, 1.558]
    assert not ortplace._holds(a, [ortplace.QParams(0.0102, 100, u8)])  # [-1.02, 1.581]



def stack_cnn() -> onnx.ModelProto:
    """Basic Pitch's constant-Q stack: x [N, 3, 8, 8] --c_k--> a_k --Transpose--> t_k
    --Unsqueeze--> u_k (k = 0, 1, 2); Concat(u_0, u_1, u_2) --Reshape--> r [N, 24, 8, 4]
    --c3--> z --c4--> y (c4, the last layer, keeps a float output); a_0's range 3x the
    others', so its grid holds them all."""
    nodes, inits = [], [onnx.numpy_helper.from_array(np.array([1], np.int64), "axis"),
                        onnx.numpy_helper.from_array(np.array([0, 24, 8, 4], np.int64), "to")]
    for k in range(3):
        nodes += [helper.make_node("Conv", ["x", f"W{k}", f"B{k}"], [f"a{k}"], name=f"c{k}",
                                   pads=[1] * 4),
                  helper.make_node("Transpose", [f"a{k}"], [f"t{k}"], name=f"t{k}",
                                   perm=[0, 2, 3, 1]),
                  helper.make_node("Unsqueeze", [f"t{k}", "axis"], [f"u{k}"], name=f"u{k}")]
        inits += [_scaled(b.weight(f"W{k}", (4, 3, 3, 3), k), 3.0 if k == 0 else 1.0),
                  _scaled(b.weight(f"B{k}", (4,), 10 + k), 3.0 if k == 0 else 1.0)]
    nodes += [helper.make_node("Concat", ["u0", "u1", "u2"], ["cat"], name="cat", axis=1),
              helper.make_node("Reshape", ["cat", "to"], ["r"], name="r"),
              helper.make_node("Conv", ["r", "W3", "B3"], ["z"], name="c3"),
              helper.make_node("Conv", ["z", "W4", "B4"], ["y"], name="c4")]
    inits += [b.weight("W3", (6, 24, 1, 1), 4), b.weight("B3", (6,), 5),
              b.weight("W4", (4, 6, 1, 1), 6), b.weight("B4", (4,), 7)]
    return b.make(nodes, [b.vi("x", [b.BATCH, 3, 8, 8])], [b.vi("y", [b.BATCH, 4, 8, 4])],
                  inits)


def _scaled(t: onnx.TensorProto, k: float) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(k * onnx.numpy_helper.to_array(t), t.name)


@NEEDS_VNNI
def test_a_chain_of_data_movement_takes_its_first_tensors_grid(monkeypatch) -> None:
    """The plan lists each Unsqueeze output (the Concat reads it) before the Transpose output
    it copies. Resolved in that order (CHAINS off) the Unsqueeze outputs had no grid, so the
    Concat's output could not take an input's (JOIN) and kept an mse range of its own
    (Basic Pitch: output error 0.030 with, 0.016 without,
    docs/deployment.md "Chains of data movement")."""
    model = stack_cnn()
    p = ortplan.plan(model, ortplan.layer_nodes(model, find_layers(model)[0]))
    assert p.tensors["u0"] == "t0" and p.tensors["t0"] == "a0"
    assert list(p.tensors).index("u0") < list(p.tensors).index("t0")
    ranges = {t: (-1.0 - 0.5 * k, 3.0) for k, t in enumerate(p.tensors)}
    params = ortplace._params(model.graph, p, ranges, "u8")
    assert all(params[f"u{k}"] == params[f"t{k}"] == params[f"a{k}"] for k in range(3))
    on, feed, _ = compressed(model)
    g = grids(on)
    assert all(g[f"u{k}"] == g[f"a{k}"] for k in range(3))
    assert g["cat"] == g["a0"]
    monkeypatch.setattr(ortplace, "CHAINS", False)
    assert "u0" not in ortplace._params(model.graph, p, ranges, "u8")
    off, _, _ = compressed(model)
    g_off = grids(off)  # no QuantizeLinear on the Unsqueeze outputs
    assert not {"u0", "u1", "u2"} & set(g_off)  # (min-max ranges: cat's own is a0's here)
    assert optimized_ops(on)["QLinearConcat"] == 1
    fused = run(on, feed, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert rel(fused, run(on, feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)) <= 0.02
