"""MatMulNBits (export/nbits.py): 4-bit MatMul / Gemm weights packed for onnxruntime compute
exactly what DequantizeLinear -> MatMul computes, for symmetric and asymmetric grids, with
and without groups, K padded to whole blocks, any activation rank; Conv stays QDQ and is
reported."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnx_obc import convert
from onnx_obc.config import CompressConfig
from onnx_obc.errors import ConfigError
from onnx_obc.export import build, fusion, nbits, ortweights, quantized_weights
from onnx_obc.flags import flags_in
from onnx_obc.layers import constant_weights, find_layers
from onnx_obc.quant import QuantSpec, codes, fit_grid, rtn
from onnx_obc.solve import HostSolution, HostWeights

from .. import builders as b

ROOT = Path(__file__).resolve().parents[2]
NBITS = {"matmul_nbits": True, "accuracy_level": 0}


def solutions(model: onnx.ModelProto, spec: QuantSpec) -> dict[str, HostSolution]:
    """Every layer on an RTN grid of `spec` (the codes and grids the solvers hand over)."""
    weights = constant_weights(model.graph)
    out = {}
    for L in find_layers(model)[0]:
        W = L.to_matrix(numpy_helper.to_array(weights[L.weight][1])).astype(np.float64)
        G, r, d = W.shape
        grid = fit_grid(W.reshape(G * r, d), spec)
        q = rtn(W.reshape(G * r, d), grid)
        h = HostWeights(L.from_matrix(q.reshape(G, r, d)), codes(q, grid).reshape(G, r, d),
                        grid, spec.bits)
        out[L.weight] = HostSolution(h, h)
    return out


def run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    """Float math throughout: no optimizer fusion, MatMulNBits on float activations."""
    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    o.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    o.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]


def both(model: onnx.ModelProto, spec: QuantSpec, **options) -> tuple[onnx.ModelProto, ...]:
    layers = find_layers(model)[0]
    sols = solutions(model, spec)
    dq = build(model, layers, sols, target="onnxruntime")
    nb = build(model, layers, sols, target="onnxruntime", target_options={**NBITS, **options})
    return dq, nb


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def assert_same(dq: onnx.ModelProto, nb: onnx.ModelProto, model: onnx.ModelProto) -> None:
    feed = b.feeds(model, 16, seed=3)
    want, got = run(dq, feed), run(nb, feed)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [None, 16, 32])
@pytest.mark.parametrize("bits", [4, 3])
def test_matmul_nbits_equals_dq_matmul(symmetric: bool, group: int | None, bits: int) -> None:
    model = b.mlp((64, 96, 8))
    dq, nb = both(model, QuantSpec(bits=bits, symmetric=symmetric, group_size=group))
    assert ops(nb)["MatMulNBits"] == 2 and "DequantizeLinear" not in ops(nb)
    assert ops(dq)["DequantizeLinear"] == 2
    zp = {n.name: len(n.input) > 3 for n in nb.graph.node if n.op_type == "MatMulNBits"}
    assert set(zp.values()) == {not symmetric}  # symmetric: the default zero point 8
    assert_same(dq, nb, model)


@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("block", [None, 16, 64])
def test_k_padded_to_whole_blocks_and_any_rank(rank: int, block: int | None) -> None:
    model = b.matmul(40, 24, rank=rank)  # K = 40: no block size divides it
    dq, nb = both(model, QuantSpec(bits=4), nbits_block_size=block)
    node = next(n for n in nb.graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: a.i for a in node.attribute}
    assert attrs == {"K": 40, "N": 24, "bits": 4, "block_size": block or 64,
                     "accuracy_level": 0}
    assert_same(dq, nb, model)


def test_gemm_with_bias_and_transposed_weight() -> None:
    for trans_b in (True, False):
        model = b.gemm(48, 20, trans_b=trans_b)
        dq, nb = both(model, QuantSpec(bits=4, symmetric=False, group_size=16))
        node = next(n for n in nb.graph.node if n.op_type == "MatMulNBits")
        assert len(node.input) == 6 and node.input[5]  # the bias input
        assert_same(dq, nb, model)
    model = b.gemm(48, 20, alpha=0.5)  # not a plain product: stays DequantizeLinear
    _, nb = both(model, QuantSpec(bits=4))
    assert "MatMulNBits" not in ops(nb)


@pytest.mark.parametrize("model", [b.constant_weight(20, 6), b.shared_weight(20, 6),
                                   b.mlp((20, 12, 4), named=False)])
def test_constant_node_shared_and_unnamed_weights(model: onnx.ModelProto) -> None:
    dq, nb = both(model, QuantSpec(bits=4, symmetric=False))
    assert "DequantizeLinear" not in ops(nb) and "Constant" not in ops(nb)
    assert_same(dq, nb, model)


def test_packed_bytes_round_trip_to_the_codes() -> None:
    assert nbits.pack(np.array([[1, 2, 15, 0]]), 1, 4).tolist() == [[0x21, 0x0F]]
    c = np.random.default_rng(0).integers(0, 16, (3, 64))
    assert np.array_equal(nbits.unpack(nbits.pack(c, 3, 64), 3, 64), c)
    model = b.mlp((48, 32, 8))  # K = 48: per channel padded to a block of 64
    layers = find_layers(model)[0]
    for spec in (QuantSpec(bits=4), QuantSpec(bits=4, symmetric=False, group_size=16)):
        qw = quantized_weights(layers, solutions(model, spec))
        packed, notes = nbits.select(model, layers, qw)
        assert not notes and set(packed) == {"W1", "W2"}
        for name, p in packed.items():
            q = qw[name]  # MatMul weights: codes [K, N]
            assert np.array_equal(p.codes(), q.codes.T.astype(np.int32) + 8 * q.signed)
            assert np.array_equal(p.dequantize(), q.dequantize())
            assert p.blob.shape == (p.N, p.k_blocks, p.block_size // 2)
        if spec.symmetric:
            assert all(p.zero_points is None for p in packed.values())


def test_conv_at_four_bits_is_folded_at_load_and_reported() -> None:
    """A 4-bit Conv weight is not for MatMulNBits: stored as codes the session dequantizes
    once at load (ortweights.py), named in the fusion check with that reason."""
    model = b.cnn()
    layers = find_layers(model)[0]
    qw = quantized_weights(layers, solutions(model, QuantSpec(bits=4)))
    packed, notes = nbits.select(model, layers, qw)
    convs = [L for L in layers if L.layout == "conv"]
    assert convs and not {L.weight for L in convs} & set(packed)
    (note,) = [n for n in notes if "Conv layer(s)" in n]  # one line for them all
    assert note.startswith(f"{len(convs)} Conv layer(s) at 4 bits or fewer")
    assert all(L.name in note for L in convs[:3])
    _, nb = both(model, QuantSpec(bits=4))
    assert ops(nb)["DequantizeLinear"] == 0 and ops(nb)["Cast"] == len(convs)
    assert set(ortweights.folded(nb)) == {L.weight for L in convs}
    result = fusion.check(nb, layers)
    assert result.kernels.get("MatMulNBits", 0) == len(layers) - len(convs)
    assert len(result.unfused) == len(convs) and all(
        "weights dequantized once at load — no integer kernel takes 4-bit Conv weights" in w
        for _, w in result.unfused)


def test_group_size_without_a_power_of_two_block_stays_qdq() -> None:
    model = b.mlp((40, 40, 8))
    layers = find_layers(model)[0]
    qw = quantized_weights(layers, solutions(model, QuantSpec(bits=4, group_size=20)))
    packed, notes = nbits.select(model, layers, qw)
    assert not packed and all("group size 20" in n for n in notes)
    with pytest.raises(ConfigError, match="does not divide the group size"):
        nbits.select(model, layers, qw, block_size=16)


def test_options_and_flags() -> None:
    cfg = CompressConfig.from_options(bits=4, runtime="onnxruntime", nbits_block_size=32,
                                      accuracy_level=0, group_size=64)
    opts = cfg.export.target_options()
    assert (opts["matmul_nbits"], opts["nbits_block_size"], opts["accuracy_level"]) == \
        (True, 32, 0)
    for bad, match in (({"nbits_block_size": 24}, "power of two"),
                       ({"accuracy_level": 5}, "accuracy_level"),
                       ({"nbits_block_size": 64, "group_size": 32}, "must divide")):
        with pytest.raises(ConfigError, match=match) as e:
            CompressConfig.from_options(bits=4, runtime="onnxruntime", **bad)
    assert "--nbits-block-size" in flags_in(str(e.value))
    with pytest.raises(ConfigError, match="runtime onnxruntime"):
        CompressConfig.from_options(bits=4, nbits_block_size=32)


def test_convert_writes_matmul_nbits_for_the_vit(tmp_path: Path) -> None:
    out = tmp_path / "vit_w4.onnx"
    r = convert(str(ROOT / "models/digits_vit.onnx"), out, bits=4, runtime="onnxruntime",
                calib=str(ROOT / "models/digits_vit.calib.npz"), method="gptq",
                compare_baseline=False, progress=False)
    model = onnx.load(out)
    n = ops(model)
    assert n["MatMulNBits"] >= 4 and any(o.domain == "com.microsoft" for o in model.opset_import)
    assert r.report.fusion["kernels"]["MatMulNBits"] == n["MatMulNBits"]
    err = r.report.fidelity["held-out calibration"]["compressed"]
    assert max(err.rel_error.values()) < 0.2


def test_the_matmulnbits_onnxruntime_makes_itself_are_reported() -> None:
    """W8 weights-only MatMuls written as DequantizeLinear -> MatMul: onnxruntime (>= 1.20)
    fuses each into a MatMulNBits of its own at accuracy_level 4 (int8 activations per block
    at run time), which the fusion check reports; ours (rewrite, accuracy_level 0) are not."""
    model = b.mlp((40, 32, 8))
    layers = find_layers(model)[0]
    dq, nb = both(model, QuantSpec(bits=4))
    w8 = build(model, layers, solutions(model, QuantSpec(bits=8)), target="onnxruntime")
    result = fusion.check(w8, layers)
    made = result.kernels.get("MatMulNBits", 0)  # (onnxruntime 1.31: the 40 x 32 one)
    assert made >= 1 and result.made_nbits == {4: made}
    line = result.to_dict()["nbits_line"]
    assert line.startswith(f"{made} MatMul(s) with DequantizeLinear weights run as "
                           "onnxruntime's own MatMulNBits at accuracy_level 4")
    assert "session.qdq_matmulnbits_accuracy_level=0" in line
    ours = fusion.check(nb, layers)
    assert ours.kernels == {"MatMulNBits": len(layers)} and ours.made_nbits == {}
    assert ours.to_dict()["nbits_line"] == ""
    assert nbits.made_line({0: 3}) == ""  # float activations: nothing to say
