"""ConvTranspose layers (onnx_obc/deconv.py): the W view and the zero-filled Conv's columns
against onnxruntime's output, the attributes refused with their reasons."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnx_obc import convert, deconv
from onnx_obc.channels.patterns import find_sites
from onnx_obc.errors import ConfigError
from onnx_obc.hessian import DiagonalAccumulator, HessianAccumulator, columns
from onnx_obc.layers import find_layers

from . import builders as b
from .test_hessian import check_layers_against_ort

CASES = {
    "2d_stride2": dict(kernel=4, strides=[2, 2], pads=[1, 1, 1, 1]),
    "2d_default": dict(),
    "2d_output_padding": dict(kernel=3, strides=[2, 2], pads=[1, 1, 1, 1],
                              output_padding=[1, 1]),
    "2d_uneven": dict(kernel=(4, 3), strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2],
                      spatial=(5, 6)),
    "2d_pads_beyond_kernel": dict(kernel=3, strides=[3, 2], pads=[3, 0, 0, 2],
                                  output_padding=[2, 1]),  # cropped, not padded
    "2d_1x1_stride2": dict(kernel=1, strides=[2, 2]),
    "2d_no_bias_valid": dict(kernel=2, strides=[2, 2], bias=False, auto_pad="VALID"),
    "1d": dict(dims=1, kernel=5, strides=[4], pads=[2, 1], spatial=7),
    "3d": dict(dims=3, kernel=(2, 3, 2), strides=[2, 1, 2], pads=[0, 1, 0, 0, 1, 1],
               spatial=(3, 4, 3), c_out=4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_columns_reproduce_onnxruntime(case):
    check_layers_against_ort(b.conv_transpose(**CASES[case]), n=3)


def test_columns_with_a_tiny_budget_match_onnxruntime():
    check_layers_against_ort(b.conv_transpose(**CASES["2d_uneven"]), n=3, budget=1)


def _hessians(case: str, budget: int = 1 << 30, dtype=np.float64):
    model = b.conv_transpose(**CASES[case])
    (L,), _ = find_layers(model)
    (u,), d = L.uses, L.matrix_shape[2]
    x, x0 = b.feeds(model, 3, 0)["x"], b.feeds(model, 3, 1)["x"]
    full, phased = HessianAccumulator(1, d, np), HessianAccumulator(1, d, np)
    for X, X0 in zip(columns(L, u, x, budget, dtype), columns(L, u, x0, budget, dtype)):
        full.add(X, X0)
    for (rows, X), (_, X0) in zip(deconv.phase_columns(u, x, budget, dtype),
                                  deconv.phase_columns(u, x0, budget, dtype)):
        phased.add(X, X0, rows=rows)
    return full, phased


@pytest.mark.parametrize("case", list(CASES))
def test_output_phases_sum_to_the_full_hessian(case):
    """Each phase's block of H from its own taps' columns: the same H (and cross moments)
    as the zero-filled Conv's whole columns, which the oracle above checks."""
    full, phased = _hessians(case)
    scale = np.abs(full.total).max()
    np.testing.assert_allclose(phased.total, full.total, rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_allclose(phased.cross, full.cross, rtol=1e-10, atol=1e-12 * scale)


def test_output_phases_in_tiny_chunks_and_float32():
    full, phased = _hessians("2d_uneven", budget=1, dtype=np.float32)
    np.testing.assert_allclose(phased.total, full.total, rtol=1e-5,
                               atol=1e-6 * np.abs(full.total).max())


def test_output_phases_give_the_8_bit_tier_its_diagonal():
    model = b.conv_transpose(**CASES["2d_output_padding"])
    (L,), _ = find_layers(model)
    (u,), d = L.uses, L.matrix_shape[2]
    x = b.feeds(model, 3, 0)["x"]
    full, phased = DiagonalAccumulator(1, d, np), DiagonalAccumulator(1, d, np)
    for X in columns(L, u, x, 1 << 30):
        full.add(X)
    for rows, X in deconv.phase_columns(u, x, 1 << 30):
        phased.add(X, rows=rows)
    np.testing.assert_allclose(phased.total, full.total, rtol=1e-12)


def test_w_view_is_output_channels_by_flipped_input_columns():
    model = b.conv_transpose(c_in=3, c_out=5, kernel=(2, 3))
    (L,), _ = find_layers(model)
    assert (L.layout, L.matrix_shape) == ("deconv", (1, 5, 3 * 2 * 3))
    w = np.arange(3 * 5 * 2 * 3, dtype=np.float32).reshape(3, 5, 2, 3)
    m = L.to_matrix(w)
    assert m[0, 4, 1 * 6 + 0] == w[1, 4, 1, 2]  # column (c=1, offset 0) = W[c, m, k-1-0]
    np.testing.assert_array_equal(L.from_matrix(m), w)
    np.testing.assert_array_equal(deconv.from_matrix(deconv.to_matrix(w), w.shape), w)


@pytest.mark.parametrize("kw, words", [
    (dict(group=2, c_in=4, c_out=6), "grouped ConvTranspose (group=2)"),
    (dict(auto_pad="SAME_UPPER", strides=[2, 2]), "auto_pad=SAME_UPPER"),
])
def test_refused_attributes_are_skipped_with_their_reason(kw, words):
    layers, skipped = find_layers(b.conv_transpose(**kw))
    assert not layers
    assert [s.op for s in skipped] == ["ConvTranspose"] and words in skipped[0].reason


def test_output_shape_is_refused():
    model = b.conv_transpose(strides=[2, 2])
    model.graph.node[0].attribute.append(helper.make_attribute("output_shape", [10, 10]))
    layers, skipped = find_layers(model)
    assert not layers and "output_shape" in skipped[0].reason


def test_not_selected_when_op_types_leave_it_out():
    from onnx_obc.specs import Selection

    layers, skipped = find_layers(b.decoder(), Selection(op_types=("Conv",)))
    assert [L.op for L in layers] == ["Conv", "Conv"]
    assert [s.op for s in skipped] == ["ConvTranspose"] and "not selected" in skipped[0].reason


# --------------------------------------------------------------------------- through convert

CALIB = 128


def _convert(**options):
    model = b.decoder()
    return model, convert(model, None, calib=b.feeds(model, CALIB, 0), progress=False,
                          **options)


def _layer(result, name: str = "up"):
    return next(L for L in result.report.layers if L.name == name)


def _error(result) -> float:
    (sets,) = result.report.fidelity.values()
    return sets["compressed"].rel_error["y"]


def _initializers(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_pruned_exactly_and_beats_magnitude_on_correlated_inputs():
    dense, r = _convert(sparsity=0.5, allocate="uniform")
    _, mag = _convert(sparsity=0.5, allocate="uniform", method="magnitude")
    up = _layer(r)
    assert up.op == "ConvTranspose" and up.sparsity == pytest.approx(0.5)
    assert up.loss < 0.5 * up.magnitude_loss  # measured 0.26
    assert _error(r) < 0.5 * _error(mag)  # measured 0.060 vs 0.177
    w = _initializers(r.model)["Wt"]
    assert w.shape == (16, 16, 4, 4) and (w == 0).mean() == pytest.approx(0.5)
    feed = b.feeds(dense, 4, 1)
    y, y0 = b.run(r.model, feed)[0], b.run(dense, feed)[0]
    assert np.abs(y - y0).max() < 0.5 * np.abs(y0).max()


def test_2_4_leaves_it_dense_with_the_reason():
    _, r = _convert(nm="2:4")
    (why,) = [x.reason for x in r.report.skipped if x.node == "up"]
    assert why.startswith("left dense: N:M is for sparse kernels")
    assert (_initializers(r.model)["Wt"] != 0).all()
    assert _layer(r, "conv2").sparsity == pytest.approx(0.5)  # the Convs are 2:4


def test_blocks_run_along_the_input_channels_at_each_kernel_position():
    _, r = _convert(sparsity=0.5, block=4)
    w = _initializers(r.model)["Wt"].reshape(4, 4, 16, 4, 4)  # [C/4, 4, M, kh, kw]
    zeros = (w == 0).sum(axis=1)  # per block of 4 input channels
    assert set(np.unique(zeros)) == {0, 4} and (w == 0).mean() == pytest.approx(0.5)


def test_w8a8_tensorrt_quantizes_the_weight_per_output_channel_on_axis_1():
    dense, r = _convert(bits=8, act_bits=8)
    g = r.model.graph
    dq = next(n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] == "Wt")
    axis = next(a.i for a in dq.attribute if a.name == "axis")
    scale = _initializers(r.model)[dq.input[1]]
    assert axis == 1 and scale.shape == (16,)
    up = next(n for n in g.node if n.op_type == "ConvTranspose")
    assert any(n.op_type == "DequantizeLinear" and n.output[0] == up.input[0] for n in g.node)
    assert _error(r) < 0.02  # measured 0.008


def test_w8a8_onnxruntime_names_the_float_convtranspose_and_stores_its_codes():
    _, r = _convert(bits=8, act_bits=8, runtime="onnxruntime", float_stem=False,
                    float_heads=False, float_highres=False)
    why = dict((u["node"], u["why"]) for u in r.report.fusion["unfused"])
    assert "no integer ConvTranspose kernel" in why["up"]
    assert r.report.fusion["kernels"] == {"QLinearConv": 1}  # conv1
    codes = _initializers(r.model)["Wt_quantized"]
    assert codes.dtype == np.int8 and codes.shape == (16, 16, 4, 4)


def test_blocked_4_bit_grid_is_whole_kernels_of_input_channel_blocks():
    """RTN at 4 bits, groups of 32 columns = 2 input channels x 16 kernel positions: the
    written codes and scales (blocked on axis 0) give exactly the min-max grid of each
    (output channel, channel block), computed here from the dense weight."""
    dense, r = _convert(bits=4, group_size=32, method="rtn", clip_search=False)
    inits = _initializers(r.model)
    dq = next(n for n in r.model.graph.node if n.output[0] == "Wt")
    attrs = {a.name: a.i for a in dq.attribute}
    assert attrs == {"axis": 0, "block_size": 2}
    got = inits["Wt_quantized"].astype(np.float32) * np.repeat(inits["Wt_scale"], 2, axis=0)
    w = _initializers(dense)["Wt"].reshape(8, 2, 16, 4, 4)
    scale = np.abs(w).max(axis=(1, 3, 4), keepdims=True) / 7
    want = (np.clip(np.round(w / scale), -7, 7) * scale).reshape(16, 16, 4, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert _layer(r).group_size == 32


def test_channel_sites_through_it_count_its_input_positions():
    """conv1 -> up: conv1's 36 inputs at 36 positions, and up's 16 rows x 16 columns (taps)
    per channel at its 36 input positions; up -> conv2: up's 256 inputs at those 36, conv2's
    3 rows x 9 taps at 144 output positions. conv2 feeds the graph output."""
    model = b.decoder()
    layers, _ = find_layers(model)
    sites, refused = find_sites(model, layers)
    got = {(s.producer.name, s.consumer.name): (s.width, s.macs, s.cell) for s in sites}
    assert got == {("conv1", "up"): (16, 36 * 36 + 16 * 16 * 36, 16 * 36),
                   ("up", "conv2"): (9, 256 * 36 + 3 * 9 * 144, 9 * 144)}
    assert [x.producer for x in refused] == ["conv2"]


def test_channels_cut_its_output_axis_1_and_input_axis_0_and_beat_the_norm():
    dense, r = _convert(channels=0.3, channel_allocate="uniform")
    w = _initializers(r.model)
    c1, c2 = w["W1"].shape[0], w["Wt"].shape[1]
    assert c1 < 16 and c2 < 16
    assert w["Wt"].shape == (c1, c2, 4, 4) and w["Bt"].shape == (c2,)
    assert w["W2"].shape == (3, c2, 3, 3)
    (sets,) = r.report.fidelity.values()
    assert _error(r) < 0.8 * sets["channels-l2"].rel_error["y"]


def test_4_bit_sequential_beats_rtn_through_the_phase_hessians():
    """--bits 4 runs sequentially (each layer on the compressed model's inputs, fitted to the
    dense ones: the cross moments of the phases too)."""
    _, r = _convert(bits=4)
    _, rtn = _convert(bits=4, method="rtn")
    assert r.report.config["run"]["sequential"]
    assert _layer(r).loss < 0.6 * _layer(r).magnitude_loss  # measured 0.38 of RTN's
    assert _error(r) < 0.7 * _error(rtn)  # measured 0.030 vs 0.062


def test_n_m_leaves_it_dense_before_any_capture(monkeypatch):
    import onnx_obc.schedule as schedule

    seen = []
    real = schedule.collect

    def spy(model, group, *args, **kwargs):
        seen.extend(L.name for L in group)
        return real(model, group, *args, **kwargs)

    monkeypatch.setattr(schedule, "collect", spy)
    _, r = _convert(nm="2:4")
    assert "up" not in seen and {"conv1", "conv2"} <= set(seen)
    assert [x.node for x in r.report.skipped if x.reason.startswith("left dense")] == ["up"]


def test_n_m_on_a_model_of_convtransposes_only_is_a_usage_error():
    model = b.conv_transpose(strides=[2, 2])
    with pytest.raises(ConfigError, match="prune.nm 2:4 leaves all 1 selected layers dense"):
        convert(model, None, calib=b.feeds(model, 16, 0), nm="2:4", progress=False)
