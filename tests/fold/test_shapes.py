"""Shape arithmetic over static sizes as constants (fold/shapes.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnx_obc.fold import fold, shapes

from .. import builders as b


def _i64(name: str, v) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(v, np.int64), name)


def _same_pad(x: str, axis_h: int, tag: str) -> list[onnx.NodeProto]:
    """TensorFlow-style pads for a 3x3 kernel from Shape(x)[axis_h]: (9 - h) // 2 + 1."""
    return [helper.make_node("Shape", [x], [f"{tag}_shape"]),
            helper.make_node("Gather", [f"{tag}_shape", "idx_h"], [f"{tag}_h"], axis=0),
            helper.make_node("Sub", ["nine", f"{tag}_h"], [f"{tag}_d"]),
            helper.make_node("Div", [f"{tag}_d", "two"], [f"{tag}_half"]),
            helper.make_node("Add", [f"{tag}_half", "one"], [f"{tag}_p"]),
            helper.make_node("Concat", ["zeros2", f"{tag}_p", f"{tag}_p", "zeros2",
                                        f"{tag}_p", f"{tag}_p"], [f"{tag}_pads"], axis=0),
            helper.make_node("Pad", [x, f"{tag}_pads"], [f"{tag}_out"], name=f"{tag}_pad")]


def two_pads(free_h: bool = False) -> onnx.ModelProto:
    """x [N, 3, 9, 9] --same pad--> c1 (3x3) --Relu--> --same pad (from the Relu's shape,
    which shape inference knows only once the first pads are constants)--> c2 (3x3)
    --Reshape to [Shape(c2)[0], -1]--> y [N, 324] (that target depends on N: it stays).
    free_h: x's height is a symbol too (nothing may be folded then)."""
    nodes = [*_same_pad("x", 2, "p1"),
             helper.make_node("Conv", ["p1_out", "W1", "B1"], ["c1"], name="c1"),
             helper.make_node("Relu", ["c1"], ["r"]),
             *_same_pad("r", 2, "p2"),
             helper.make_node("Conv", ["p2_out", "W2", "B2"], ["c2"], name="c2"),
             helper.make_node("Shape", ["c2"], ["c2_shape"]),
             helper.make_node("Gather", ["c2_shape", "idx0"], ["n"], axis=0),
             helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["c2", "target"], ["y"])]
    inits = [b.weight("W1", (4, 3, 3, 3), 0), b.weight("B1", (4,), 1),
             b.weight("W2", (4, 4, 3, 3), 2), b.weight("B2", (4,), 3),
             _i64("idx_h", [2]), _i64("nine", [9]), _i64("two", [2]), _i64("one", [1]),
             _i64("zeros2", [0, 0]), _i64("idx0", [0]), _i64("minus1", [-1])]
    h = "H" if free_h else 9
    return b.make(nodes, [b.vi("x", [b.BATCH, 3, h, 9])], [b.vi("y", [b.BATCH, None])], inits)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    o = ort.SessionOptions()
    o.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_static_pads_become_constants_and_the_batch_dependent_target_stays() -> None:
    model = two_pads()
    out, done = fold(model)
    assert done.shapes == 2 and "2 shape computations" in done.summary()
    inits = {t.name for t in out.graph.initializer}
    pads = {n.name: n.input[1] for n in out.graph.node if n.op_type == "Pad"}
    assert set(pads.values()) <= inits  # both Pads' pads, the second found in a later round
    assert [numpy_helper.to_array(t).tolist() for t in out.graph.initializer
            if t.name == pads["p2_pad"]] == [[0, 0, 1, 1, 0, 0, 1, 1]]
    reshape = next(n for n in out.graph.node if n.op_type == "Reshape")
    assert reshape.input[1] not in inits  # [N, -1]: computed at run time, as before
    assert sum(n.op_type == "Shape" for n in out.graph.node) == 1
    onnx.checker.check_model(out, full_check=True)
    for n in (1, 2, 5):
        x = np.random.default_rng(n).standard_normal((n, 3, 9, 9)).astype(np.float32)
        got, want = _run(out, x), _run(model, x)
        assert got.shape == want.shape == (n, 324)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_nothing_folds_where_a_spatial_size_is_free_or_the_rule_is_off(monkeypatch) -> None:
    out, done = fold(two_pads(free_h=True))
    assert done.shapes == 0 and not done.changed
    monkeypatch.setattr(shapes, "SHAPE_FOLD", False)
    out, done = fold(two_pads())
    assert done.shapes == 0 and sum(n.op_type == "Shape" for n in out.graph.node) == 3
