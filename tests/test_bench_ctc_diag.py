"""The edit operations and QDQ weight reading of bench/real_ctc_diag.py."""

import importlib.util
from pathlib import Path

import numpy as np
from onnx import helper, numpy_helper

_spec = importlib.util.spec_from_file_location(
    "real_ctc_diag", Path(__file__).resolve().parent.parent / "bench" / "real_ctc_diag.py")
diag = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(diag)


def test_edit_ops_count_insertions_deletions_substitutions():
    assert diag.edit_ops("abc", "abc") == (0, 0, 0)
    assert diag.edit_ops("abxc", "abc") == (1, 0, 0)  # got has an extra character
    assert diag.edit_ops("ac", "abc") == (0, 1, 0)
    assert diag.edit_ops("abd", "abc") == (0, 0, 1)
    assert diag.edit_ops("", "ab") == (0, 2, 0)
    ins, dele, sub = diag.edit_ops("x1y2", "xy3")
    assert (ins, dele, sub) == (1, 0, 1)  # Levenshtein distance 2: insert 1, 3 -> 2


def test_weight_dequantizes_per_output_channel():
    rng = np.random.default_rng(0)
    q = rng.integers(-7, 8, (3, 4)).astype(np.int8)
    s = np.array([0.5, 0.1, 2.0], np.float32)
    z = np.zeros(3, np.int8)
    b = rng.standard_normal(3).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=0),
             helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="head", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4])],
                          [helper.make_tensor_value_info("y", 1, [1, 3])],
                          [numpy_helper.from_array(a, n) for a, n in
                           ((q, "q"), (s, "s"), (z, "z"), (b, "b"))])
    w, bias = diag._weight(helper.make_model(g), "head")
    assert np.allclose(w, q.astype(np.float64) * s[:, None])
    assert np.allclose(bias, b)
