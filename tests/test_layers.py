"""find_layers on every builder: what is found, how it is viewed as W [G, r, d], what is
skipped and why, selection filters, and the exact to_matrix / from_matrix round trip."""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_obc.config import CompressConfig, Selection
from onnx_obc.layers import Layer, constant_weights, find_layers, node_label

from . import builders as b

CFG = CompressConfig.from_options(sparsity=0.5)


def layers_of(model: onnx.ModelProto, **cfg):
    return find_layers(model, Selection(**cfg))


def weight_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(constant_weights(model.graph)[name][1])


def only(layers: list[Layer]) -> Layer:
    assert len(layers) == 1, layers
    return layers[0]


# --------------------------------------------------------------------------- found layers

CONV_CASES = {
    "1d": dict(dims=1, spatial=9, kernel=3),
    "2d": dict(),
    "3d": dict(dims=3, spatial=5, kernel=(2, 3, 2), c_out=4),
    "strides_dilations_pads": dict(strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1]),
    "same_upper": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "same_lower": dict(auto_pad="SAME_LOWER"),
    "valid": dict(auto_pad="VALID"),
    "group": dict(group=2, c_in=4, c_out=6),
    "depthwise": dict(group=4, c_in=4, c_out=8),
    "no_kernel_attr": dict(kernel_attr=False, kernel=(3, 2)),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_layer(case):
    kw = CONV_CASES[case]
    model = b.conv(**kw)
    layers, skipped = layers_of(model)
    L = only(layers)
    assert skipped == []
    dims = kw.get("dims", 2)
    k = b._tuple(kw.get("kernel", 3), dims)
    c_in, c_out, group = kw.get("c_in", 4), kw.get("c_out", 6), kw.get("group", 1)
    assert (L.weight, L.op, L.layout, L.storage, L.groups) == ("W", "Conv", "conv",
                                                                "initializer", group)
    assert L.shape == (c_out, c_in // group, *k)
    assert L.dtype == "float32"
    assert L.matrix_shape == (group, c_out // group, (c_in // group) * math.prod(k))
    (u,) = L.uses
    assert (u.node, u.op, u.input, u.group) == ("conv", "Conv", "x", group)
    assert u.kernel == k
    assert u.strides == tuple(kw.get("strides", [1] * dims))
    assert u.dilations == tuple(kw.get("dilations", [1] * dims))
    assert u.pads == tuple(kw.get("pads", [0] * (2 * dims)))
    assert u.auto_pad == kw.get("auto_pad", "NOTSET")
    assert L.name == "conv"


@pytest.mark.parametrize("trans_a,trans_b,alpha", [(False, True, 1.0), (False, False, 1.0),
                                                   (True, True, 0.5), (True, False, -2.0)])
def test_gemm_layer(trans_a, trans_b, alpha):
    L = only(layers_of(b.gemm(6, 5, trans_a=trans_a, trans_b=trans_b, alpha=alpha))[0])
    assert (L.weight, L.op, L.storage) == ("B", "Gemm", "initializer")
    assert L.layout == ("rows" if trans_b else "cols")
    assert L.shape == ((5, 6) if trans_b else (6, 5))
    assert L.matrix_shape == (1, 5, 6)  # rows = outputs, columns = inputs, either way
    (u,) = L.uses
    assert (u.trans_a, u.alpha, u.input) == (trans_a, alpha, "x")


@pytest.mark.parametrize("rank", [2, 3, 4])
def test_matmul_layer(rank):
    layers, skipped = layers_of(b.matmul(6, 5, rank=rank))
    L = only(layers)
    assert skipped == []
    assert (L.weight, L.op, L.layout, L.storage, L.shape) == ("W", "MatMul", "cols",
                                                               "initializer", (6, 5))
    assert L.matrix_shape == (1, 5, 6)
    assert [u.input for u in L.uses] == ["x"]


def test_mlp_finds_both_layers_with_their_inputs():
    layers, skipped = layers_of(b.mlp((8, 12, 4)))
    assert skipped == []
    assert [(L.weight, L.name, L.matrix_shape) for L in layers] == [
        ("W1", "fc1", (1, 12, 8)), ("W2", "fc2", (1, 4, 12))]
    assert [L.uses[0].input for L in layers] == ["x", "r"]


def test_unnamed_nodes_get_positional_labels():
    layers, _ = layers_of(b.mlp(named=False))
    assert [L.name for L in layers] == ["<MatMul #0>", "<MatMul #2>"]


def test_constant_node_weight_is_found_with_constant_storage():
    L = only(layers_of(b.constant_weight(6, 5))[0])
    assert (L.weight, L.storage, L.layout, L.shape) == ("W", "constant", "cols", (6, 5))
    assert L.matrix_shape == (1, 5, 6)


def test_float16_weight_keeps_its_dtype():
    L = only(layers_of(b.matmul(6, 5, dtype=np.float16))[0])
    assert L.dtype == "float16"


def test_shared_weight_is_one_layer_with_two_uses():
    layers, skipped = layers_of(b.shared_weight())
    L = only(layers)
    assert skipped == []
    assert L.weight == "W"
    assert [(u.node, u.input) for u in L.uses] == [("mm1", "x"), ("mm2", "t")]
    assert L.name == "mm1, mm2"


def test_gemm_and_matmul_with_the_same_layout_share_one_layer():
    L = only(layers_of(b.gemm_and_matmul_share())[0])
    assert L.layout == "cols"
    assert [(u.node, u.op, u.input) for u in L.uses] == [("gemm", "Gemm", "x"),
                                                         ("mm", "MatMul", "n")]


def test_cnn_finds_conv_and_gemm():
    layers, skipped = layers_of(b.cnn())
    assert skipped == []
    assert [(L.weight, L.op, L.layout, L.matrix_shape) for L in layers] == [
        ("Wc", "Conv", "conv", (1, 4, 18)), ("Wfc", "Gemm", "rows", (1, 3, 144))]


def test_model_without_layers_finds_and_skips_nothing():
    assert layers_of(b.no_layers()) == ([], [])


# --------------------------------------------------------------------------- skipped nodes

SKIP_CASES = {
    # builder: (expected layer weights, {node: key phrase of its reason})
    "weight_also_used_elsewhere": ([], {"mm": "also feeds Add node add"}),
    "activation_matmul": ([], {"bmm": "'b' is a graph input, not a constant"}),
    "attention_scores": (["Wq", "Wk"], {"scores": "a product of two activations"}),
    "weight_from_transpose": ([], {"mm": "computed from constants by a Transpose node"}),
    "weight_is_graph_input": ([], {"mm": "'W' is a graph input, not a constant"}),
    "weight_first_matmul": ([], {"mm": "first MatMul input (W @ X)"}),
    "int_matmul": ([], {"mm": "non-float type INT32"}),
    "batched_weight_matmul": ([], {"mm": "rank 3; only 2-D weights"}),
    "mixed_layouts": ([], {"gemm": "different layouts", "mm": "different layouts"}),
    "weight_is_graph_output": ([], {"mm": "also a graph output"}),
    "conv_bad_group": ([], {"conv": "group 2 does not divide 5 outputs"}),
}


@pytest.mark.parametrize("name", list(SKIP_CASES))
def test_non_compressible_nodes_are_reported_with_a_reason(name):
    want_layers, want_skips = SKIP_CASES[name]
    layers, skipped = layers_of(getattr(b, name)())
    assert [L.weight for L in layers] == want_layers
    assert sorted(s.node for s in skipped) == sorted(want_skips)
    for s in skipped:
        assert want_skips[s.node] in s.reason, s.reason


def test_skipped_entries_name_op_and_weight():
    _, skipped = layers_of(b.mixed_layouts())
    assert {(s.node, s.op, s.weight) for s in skipped} == {("gemm", "Gemm", "W"),
                                                           ("mm", "MatMul", "W")}
    _, (s,) = layers_of(b.weight_from_transpose())
    assert (s.op, s.weight) == ("MatMul", "Wt")


ALL_BUILDERS = [
    b.conv, b.gemm, b.matmul, b.mlp, b.constant_weight, b.shared_weight,
    b.weight_also_used_elsewhere, b.activation_matmul, b.attention_scores,
    b.weight_from_transpose, b.weight_is_graph_input, b.weight_first_matmul, b.int_matmul,
    b.batched_weight_matmul, b.mixed_layouts, b.gemm_and_matmul_share,
    b.weight_is_graph_output, b.conv_bad_group, b.cnn, b.no_layers, b.two_inputs,
    b.symbolic_feature,
]


@pytest.mark.parametrize("builder", ALL_BUILDERS, ids=lambda f: f.__name__)
def test_every_layer_node_is_accounted_for_exactly_once(builder):
    """Each Conv/Gemm/MatMul node is either a use of exactly one layer or skipped once."""
    model = builder()
    layers, skipped = layers_of(model)
    expected = sorted(node_label(n, i) for i, n in enumerate(model.graph.node)
                      if n.op_type in ("Conv", "Gemm", "MatMul"))
    used = [u.node for L in layers for u in L.uses]
    assert sorted(used + [s.node for s in skipped]) == expected
    assert len({L.weight for L in layers}) == len(layers)
    assert all(s.reason for s in skipped)


def test_weight_also_used_inside_a_subgraph_is_not_compressed():
    layers, skipped = layers_of(b.if_subgraph_weight())
    assert [L.weight for L in layers] == []
    assert "outer_mm" in {s.node for s in skipped}


# --------------------------------------------------------------------------- selection


def test_op_types_filter_skips_other_kinds_and_says_so():
    layers, skipped = layers_of(b.cnn(), op_types=("Conv",))
    assert [L.weight for L in layers] == ["Wc"]
    (s,) = skipped
    assert (s.node, s.op, s.weight) == ("fc", "Gemm", "Wfc")
    assert "op type Gemm not selected" in s.reason and "--op-types Conv" in s.reason


def test_include_pattern():
    layers, skipped = layers_of(b.mlp(), include=("fc1",))
    assert [L.name for L in layers] == ["fc1"]
    (s,) = skipped
    assert s.node == "fc2" and "not matched by --include fc1" in s.reason


def test_include_glob_matches_several():
    layers, skipped = layers_of(b.attention_scores(), include=("?",))
    assert [L.name for L in layers] == ["q", "k"]
    assert [s.node for s in skipped] == ["scores"]


def test_exclude_pattern():
    layers, skipped = layers_of(b.mlp(), exclude=("*2",))
    assert [L.name for L in layers] == ["fc1"]
    (s,) = skipped
    assert s.node == "fc2" and "excluded by --exclude '*2'" in s.reason


def test_exclude_wins_over_include():
    layers, skipped = layers_of(b.mlp(), include=("fc*",), exclude=("fc1",))
    assert [L.name for L in layers] == ["fc2"]
    assert [(s.node, "excluded" in s.reason) for s in skipped] == [("fc1", True)]


def test_patterns_match_positional_labels_of_unnamed_nodes():
    layers, skipped = layers_of(b.mlp(named=False), exclude=("<MatMul #0>",))
    assert [L.name for L in layers] == ["<MatMul #2>"]
    assert [s.node for s in skipped] == ["<MatMul #0>"]


def test_excluding_one_use_of_a_shared_weight_skips_the_whole_weight():
    layers, skipped = layers_of(b.shared_weight(), exclude=("mm2",))
    assert layers == []
    assert sorted(s.node for s in skipped) == ["mm1", "mm2"]
    for s in skipped:
        assert "excluded by --exclude 'mm2'" in s.reason and "shares weight 'W'" in s.reason


# --------------------------------------------------------------------------- matrix view

ROUND_TRIP_MODELS = {
    **{f"conv_{k}": (lambda kw=kw: b.conv(**kw)) for k, kw in CONV_CASES.items()},
    "gemm_rows": lambda: b.gemm(6, 5, trans_b=True),
    "gemm_cols": lambda: b.gemm(6, 5, trans_b=False),
    "matmul": lambda: b.matmul(6, 5),
    "matmul_f16": lambda: b.matmul(6, 5, dtype=np.float16),
    "constant": lambda: b.constant_weight(),
    "cnn": b.cnn,
}


@pytest.mark.parametrize("name", list(ROUND_TRIP_MODELS))
def test_to_matrix_from_matrix_round_trip_is_exact(name):
    model = ROUND_TRIP_MODELS[name]()
    layers, _ = layers_of(model)
    assert layers
    for L in layers:
        w = weight_array(model, L.weight)
        m = L.to_matrix(w)
        assert m.shape == L.matrix_shape
        back = L.from_matrix(m)
        assert back.shape == w.shape and back.dtype == w.dtype
        np.testing.assert_array_equal(back, w)
        # a different matrix goes back too (not just a view of w)
        m2 = np.arange(m.size, dtype=np.float64).reshape(m.shape)
        np.testing.assert_array_equal(L.to_matrix(L.from_matrix(m2)), m2)


@pytest.mark.parametrize("name", list(ROUND_TRIP_MODELS))
def test_to_matrix_puts_each_weight_at_its_row_and_column(name):
    """rows = output channels; columns = (input channel in group, *kernel) / input features."""
    model = ROUND_TRIP_MODELS[name]()
    for L in layers_of(model)[0]:
        w = weight_array(model, L.weight)
        m = L.to_matrix(w)
        G, r, d = L.matrix_shape
        if L.layout == "rows":
            np.testing.assert_array_equal(m[0], w)
        elif L.layout == "cols":
            np.testing.assert_array_equal(m[0], w.T)
        else:
            K = math.prod(w.shape[2:])
            for g, o, c in itertools.product(range(G), range(r), range(w.shape[1])):
                for ki, kidx in enumerate(np.ndindex(*w.shape[2:])):
                    assert m[g, o, c * K + ki] == w[(g * r + o, c, *kidx)]


def test_from_matrix_writes_a_changed_entry_back_to_the_right_place():
    model = b.conv(group=2, c_in=4, c_out=6, kernel=(3, 2))
    L = only(layers_of(model)[0])
    w = weight_array(model, "W")  # [6, 2, 3, 2]
    m = L.to_matrix(w).copy()  # [2, 3, 12]
    m[1, 2, 1 * 6 + 2 * 2 + 1] = 99.0  # group 1, row 2 -> out channel 5; c=1, kh=2, kw=1
    w2 = L.from_matrix(m)
    assert w2[5, 1, 2, 1] == 99.0
    assert (w2 != w).sum() == 1
