"""The strongest oracle: onnxruntime. For every layer, W[g] @ X[g] rebuilt from
`hessian.columns` and `Layer.to_matrix` must equal the node's output computed by onnxruntime
(minus its bias). Then chunking, streaming and sample counting of the Hessian."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnx_obc import calib
from onnx_obc.backend import get_backend
from onnx_obc.config import CompressConfig
from onnx_obc.hessian import HessianAccumulator, columns, conv_pads
from onnx_obc.layers import Layer, Use, constant_weights, find_layers, node_label
from onnx_obc.collect import collect

from . import builders as b

CFG = CompressConfig.from_options(sparsity=0.5)
BIG = 1 << 30


def run_with(model: onnx.ModelProto, feed: dict[str, np.ndarray], names: list[str]
             ) -> dict[str, np.ndarray]:
    """Values of graph inputs and of any intermediate tensors in `names` (exposed as outputs)."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    have = {o.name for o in aug.graph.output}
    extra = [n for n in dict.fromkeys(names) if n not in feed and n not in have]
    for n in extra:
        aug.graph.output.append(helper.make_empty_tensor_value_info(n))
    sess = ort.InferenceSession(aug.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    return {**feed, **dict(zip(outs, sess.run(outs, feed)))}


def all_columns(layer: Layer, use: Use, act: np.ndarray, budget: int = BIG) -> np.ndarray:
    chunks = list(columns(layer, use, act, budget))
    assert all(c.dtype == np.float64 for c in chunks)
    return np.concatenate(chunks, axis=2)


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(constant_weights(model.graph)[name][1]).astype(np.float64)


def check_layers_against_ort(model: onnx.ModelProto, n: int = 3, seed: int = 0,
                             budget: int = BIG, expect_layers: int = 1) -> None:
    layers, _ = find_layers(model)
    assert len(layers) == expect_layers
    feed = b.feeds(model, n, seed)
    nodes = {node_label(nd, i): nd for i, nd in enumerate(model.graph.node)}
    uses = [(L, u) for L in layers for u in L.uses]
    vals = run_with(model, feed, [u.input for _, u in uses] + [nodes[u.node].output[0]
                                                                for _, u in uses])
    for L, u in uses:
        node = nodes[u.node]
        W = L.to_matrix(_init(model, L.weight))  # [G, r, d]
        act = vals[u.input]
        X = all_columns(L, u, act, budget)  # [G, d, n]
        G, r, d = L.matrix_shape
        assert X.shape[:2] == (G, d)
        Y = W @ X  # [G, r, n]
        y = vals[node.output[0]].astype(np.float64)
        if u.op in ("Conv", "ConvTranspose"):
            N, L_out = y.shape[0], int(np.prod(y.shape[2:]))
            assert X.shape[2] == N * L_out  # sample-major, then output positions
            got = Y.reshape(G, r, N, L_out).transpose(2, 0, 1, 3).reshape(y.shape)
            if len(node.input) > 2 and node.input[2]:
                bias = _init(model, node.input[2])
                y = y - bias.reshape(1, -1, *([1] * (y.ndim - 2)))
        elif u.op == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            got = Y[0].T
            if len(node.input) > 2 and node.input[2]:
                y = y - attrs.get("beta", 1.0) * _init(model, node.input[2])
        else:
            got = Y[0].T.reshape(*act.shape[:-1], r)
        assert got.shape == y.shape
        scale = max(1.0, float(np.abs(y).max()))
        np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4 * scale,
                                   err_msg=f"{u.node} ({u.op}) output != W @ X")


# --------------------------------------------------------------------------- conv oracle

CONV_CASES = {
    "1d": dict(dims=1, spatial=9),
    "1d_stride_dilation_asym_pads": dict(dims=1, spatial=11, strides=[2], dilations=[2],
                                         pads=[2, 1]),
    "1d_same_upper_even_kernel": dict(dims=1, spatial=8, kernel=4, auto_pad="SAME_UPPER"),
    "2d": dict(),
    "2d_strides": dict(strides=[2, 3], spatial=(9, 10)),
    "2d_dilations": dict(dilations=[2, 1], spatial=(8, 7)),
    "2d_asym_pads": dict(pads=[0, 2, 1, 0], kernel=(3, 2)),
    "2d_everything": dict(strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1], spatial=(8, 9),
                          group=2, c_in=4, c_out=6),
    "2d_same_upper": dict(auto_pad="SAME_UPPER", strides=[2, 2], kernel=(3, 2), spatial=(7, 8)),
    "2d_same_upper_s1": dict(auto_pad="SAME_UPPER", kernel=(2, 4)),
    "2d_same_lower": dict(auto_pad="SAME_LOWER", strides=[2, 1], kernel=(2, 3)),
    "2d_same_lower_s1": dict(auto_pad="SAME_LOWER", kernel=(2, 4)),
    "2d_same_big_stride": dict(auto_pad="SAME_UPPER", strides=[3, 4], kernel=(1, 2),
                               spatial=(7, 9)),
    "2d_valid": dict(auto_pad="VALID", strides=[2, 2]),
    "2d_valid_dilated": dict(auto_pad="VALID", dilations=[2, 3], spatial=(9, 10)),
    "2d_group": dict(group=2, c_in=4, c_out=6),
    "2d_depthwise": dict(group=4, c_in=4, c_out=4),
    "2d_depthwise_multiplier": dict(group=4, c_in=4, c_out=8, pads=[1, 1, 1, 1]),
    "2d_1x1": dict(kernel=1, strides=[2, 2]),
    "2d_no_bias_no_kernel_attr": dict(bias=False, kernel_attr=False, kernel=(2, 3)),
    "3d": dict(dims=3, spatial=(5, 4, 6), kernel=(2, 3, 2), c_out=4),
    "3d_strides_pads_group": dict(dims=3, spatial=5, kernel=2, strides=[2, 1, 2],
                                  pads=[1, 0, 0, 0, 1, 1], group=2, c_out=4),
    "3d_same_lower": dict(dims=3, spatial=(4, 5, 3), kernel=2, auto_pad="SAME_LOWER",
                          c_out=2),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_columns_reproduce_onnxruntime(case):
    check_layers_against_ort(b.conv(**CONV_CASES[case]), n=3)


@pytest.mark.parametrize("case", ["2d_same_upper_s1", "2d_same_lower_s1", "2d_everything"])
def test_conv_columns_with_a_tiny_budget_match_onnxruntime(case):
    check_layers_against_ort(b.conv(**CONV_CASES[case]), n=3, budget=1)


def test_oracle_is_sensitive_to_same_upper_vs_lower():
    """The two auto_pad modes give different columns here, so the oracle can tell them apart."""
    model = b.conv(**CONV_CASES["2d_same_upper_s1"])
    (L,), _ = find_layers(model)
    u = L.uses[0]
    assert conv_pads(u, (7, 7)) == [(0, 1), (1, 2)]
    lower = Use(**{**u.__dict__, "auto_pad": "SAME_LOWER"})
    assert conv_pads(lower, (7, 7)) == [(1, 0), (2, 1)]
    x = b.feeds(model, 2)["x"]
    assert not np.allclose(all_columns(L, u, x), all_columns(L, lower, x))


# --------------------------------------------------------------------------- linear oracle


@pytest.mark.parametrize("trans_a,trans_b,alpha,beta", [
    (False, True, 1.0, 1.0), (False, False, 1.0, 1.0), (True, True, 0.5, 1.0),
    (True, False, 2.0, 0.5), (False, True, -1.5, 0.0)])
def test_gemm_columns_reproduce_onnxruntime(trans_a, trans_b, alpha, beta):
    check_layers_against_ort(b.gemm(6, 5, trans_a=trans_a, trans_b=trans_b, alpha=alpha,
                                    beta=beta), n=4)


@pytest.mark.parametrize("rank", [2, 3, 4])
def test_matmul_columns_reproduce_onnxruntime(rank):
    check_layers_against_ort(b.matmul(6, 5, rank=rank), n=3)


@pytest.mark.parametrize("builder,count", [
    (b.mlp, 2), (b.constant_weight, 1), (b.shared_weight, 1), (b.gemm_and_matmul_share, 1),
    (b.cnn, 2), (b.attention_scores, 2)], ids=lambda x: getattr(x, "__name__", str(x)))
def test_multi_layer_models_reproduce_onnxruntime(builder, count):
    """Intermediate activations (captured) and every use of a shared weight."""
    check_layers_against_ort(builder(), n=4, expect_layers=count)


# --------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("case", ["2d_everything", "3d_strides_pads_group", "2d_depthwise"])
def test_tiny_chunk_budget_gives_the_same_hessian(case):
    model = b.conv(**CONV_CASES[case])
    (L,), _ = find_layers(model)
    u = L.uses[0]
    x = b.feeds(model, 5)["x"]
    big = list(columns(L, u, x, BIG))
    tiny = list(columns(L, u, x, 1))
    assert len(big) == 1
    assert len(tiny) == 5  # one sample per chunk
    H_big, H_tiny = (HessianAccumulator(L.groups, L.matrix_shape[2], np) for _ in range(2))
    for X in big:
        H_big.add(X)
    for X in tiny:
        H_tiny.add(X)
    np.testing.assert_allclose(H_tiny.total, H_big.total, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.concatenate(tiny, axis=2), big[0])


# --------------------------------------------------------------------------- accumulator


def test_streaming_over_batches_equals_one_big_batch():
    model = b.conv(**CONV_CASES["2d_group"])
    (L,), _ = find_layers(model)
    u = L.uses[0]
    G, _, d = L.matrix_shape
    x = b.feeds(model, 7)["x"]
    one = HessianAccumulator(G, d, np)
    for X in columns(L, u, x, BIG):
        one.add(X)
    one.count(7)
    stream = HessianAccumulator(G, d, np)
    for lo, hi in [(0, 3), (3, 4), (4, 7)]:
        for X in columns(L, u, x[lo:hi], BIG):
            stream.add(X)
        stream.count(hi - lo)
    assert stream.samples == one.samples == 7
    np.testing.assert_allclose(stream.mean(), one.mean(), rtol=1e-12, atol=1e-12)
    assert stream.mean().shape == (G, d, d)


def test_merge_equals_adding(rng):
    X1, X2 = rng.standard_normal((2, 4, 10)), rng.standard_normal((2, 4, 6))
    a, c, both = (HessianAccumulator(2, 4, np) for _ in range(3))
    a.add(X1)
    a.count(3)
    c.add(X2)
    c.count(2)
    both.add(X1)
    both.add(X2)
    both.count(5)
    a.merge(c)
    assert a.samples == 5
    np.testing.assert_allclose(a.total, both.total, rtol=1e-12)
    np.testing.assert_allclose(a.mean(), both.mean(), rtol=1e-12)


def test_mean_divides_by_samples_and_is_float64(rng):
    X = rng.standard_normal((1, 3, 40))  # e.g. 4 samples x 10 tokens
    acc = HessianAccumulator(1, 3, np)
    acc.add(X)
    acc.count(4)
    assert acc.total.dtype == np.float64
    np.testing.assert_allclose(acc.mean(), X @ X.transpose(0, 2, 1) / 4, rtol=1e-12)


def test_mean_without_samples_raises():
    with pytest.raises(ValueError, match="no calibration samples"):
        HessianAccumulator(1, 3, np).mean()


def _pipeline_hessians(model: onnx.ModelProto, n: int, batch: int, **cfg):
    layers, _ = find_layers(model)
    data = calib.DataSet(b.feeds(model, n, seed=3), "feeds")  # arrays in memory
    accs, _ = collect(model, layers, data, batch, get_backend("cpu"),
                      CFG.replace(**cfg).run.memory_budget_mb, progress=False)
    return layers, data, accs


def test_pipeline_hessian_counts_samples_not_tokens():
    """rank-3 MatMul: x [N=6, T=5, d]; H = sum over 30 token columns / 6 samples."""
    model = b.matmul(6, 5, rank=3)
    (L,), data, accs = _pipeline_hessians(model, n=6, batch=4)
    acc = accs["W"]
    assert acc.samples == 6
    X = data.arrays["x"].astype(np.float64).reshape(-1, 6).T
    np.testing.assert_allclose(acc.mean()[0], X @ X.T / 6, rtol=1e-10)


def test_pipeline_hessian_counts_samples_not_positions():
    """Conv: H = sum over N*L im2col columns / N samples."""
    model = b.conv(**CONV_CASES["2d_strides"])
    (L,), data, accs = _pipeline_hessians(model, n=5, batch=2)
    acc = accs["W"]
    assert acc.samples == 5
    X = all_columns(L, L.uses[0], data.arrays["x"])
    np.testing.assert_allclose(acc.mean(), X @ X.transpose(0, 2, 1) / 5, rtol=1e-10)


def test_pipeline_hessian_of_intermediate_and_shared_weights():
    """fc2 sees relu(x @ W1); a shared weight gets (X1 X1^T + X2 X2^T) / N."""
    model = b.mlp((8, 12, 4))
    layers, data, accs = _pipeline_hessians(model, n=7, batch=3)
    x = data.arrays["x"].astype(np.float64)
    r = np.maximum(x @ _init(model, "W1"), 0)
    assert accs["W2"].samples == 7
    np.testing.assert_allclose(accs["W2"].mean()[0], r.T @ r / 7, rtol=1e-5, atol=1e-8)

    model = b.shared_weight()
    _, data, accs = _pipeline_hessians(model, n=6, batch=4)
    x = data.arrays["x"].astype(np.float64)
    t = np.tanh(x)
    assert accs["W"].samples == 6
    np.testing.assert_allclose(accs["W"].mean()[0], (x.T @ x + t.T @ t) / 6, rtol=1e-5,
                               atol=1e-8)


@pytest.mark.parametrize("case", ["2d_everything", "2d_group"])
def test_float32_products_summed_in_float64_match_float64(case):
    """hessian_dtype float32 (8-bit-only runs): each batch's X X^T in float32, summed in
    float64, is the float64 Hessian within float32 rounding; the sums stay float64."""
    model = b.conv(**CONV_CASES[case])
    (L,), _ = find_layers(model)
    u = L.uses[0]
    G, _, d = L.matrix_shape
    x = b.feeds(model, 6)["x"]
    accs = {}
    for dt in (np.float64, np.float32):
        acc = HessianAccumulator(G, d, np)
        for lo in range(0, 6, 2):
            for X in columns(L, u, x[lo:lo + 2], BIG, dt):
                assert X.dtype == dt
                acc.add(X)
            acc.count(2)
        assert acc.total.dtype == np.float64
        accs[dt] = acc.mean()
    H64, H32 = accs[np.float64], accs[np.float32]
    scale = np.abs(H64).max()
    assert np.abs(H32 - H64).max() <= 1e-5 * scale
    assert not np.array_equal(H32, H64)  # float32 products indeed


def test_only_8_bit_quantization_alone_captures_in_float32():
    from onnx_obc.tier import hessian_dtype

    f = lambda **kw: hessian_dtype(CompressConfig.from_options(**kw), np)  # noqa: E731
    assert f(bits=8) is np.float32 and f(bits=8, act_bits=8) is np.float32
    assert f(bits=4) is np.float64 and f(sparsity=0.5) is np.float64
    assert f(bits=8, sparsity=0.5) is np.float64
