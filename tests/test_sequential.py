"""--sequential: later layer groups are calibrated on the compressed model and fitted to the
dense model's outputs; one group is the one-shot run exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import numpy_helper

from onnx_obc import convert
from onnx_obc.solvers.prepare import fit_to_reference

from .solvers.data import correlated_H, weights

MODELS = Path(__file__).resolve().parents[1] / "models"


def _run(**kw):
    return convert(MODELS / "digits_vit.onnx", None, calib=MODELS / "digits_vit.calib.npz",
                   eval_data=MODELS / "digits_vit.eval.npz", progress=False, device="cpu", **kw)


def test_sequential_lowers_the_output_error_on_held_out_data():
    one = _run(sparsity=0.7, allocate="uniform")
    seq = _run(sparsity=0.7, allocate="uniform", sequential=True)
    e1 = max(one.report.fidelity["eval"]["compressed"].rel_error.values())
    e2 = max(seq.report.fidelity["eval"]["compressed"].rel_error.values())
    assert e2 < 0.8 * e1
    for layer in seq.report.layers:  # still exactly at the target
        n = layer.rows * layer.cols
        assert abs(layer.sparsity * n - 0.7 * n) <= 1


def test_one_sequential_group_is_the_one_shot_run():
    a = _run(sparsity=0.5, compare_baseline=False)
    b = _run(sparsity=0.5, sequential=True, sequential_groups=1, compare_baseline=False)
    for x, y in zip(a.model.graph.initializer, b.model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(x), numpy_helper.to_array(y))


def test_fit_to_reference_is_identity_without_upstream_error_and_fits_otherwise():
    W = weights(6, 20, 0)
    H = correlated_H(20, 0)[None]
    np.testing.assert_allclose(fit_to_reference(W, H, H, 0.01), W, rtol=1e-6, atol=1e-9)
    rng = np.random.default_rng(1)
    X0 = rng.standard_normal((20, 8)) @ rng.standard_normal((8, 500))
    X = X0 + 0.3 * rng.standard_normal(X0.shape)  # inputs perturbed upstream
    Hx, C = (X @ X.T / 500)[None], (X0 @ X.T / 500)[None]
    Wt = fit_to_reference(W, Hx, C, 1e-6)
    err_t = np.sum((W[0] @ X0 - Wt[0] @ X) ** 2)
    err_w = np.sum((W[0] @ X0 - W[0] @ X) ** 2)
    assert err_t < 0.5 * err_w


def test_fit_to_reference_leaves_a_dead_group_as_it_is():
    """A depthwise conv's channel that no sample reaches (its group's H and C all 0, as
    on EfficientNet-Lite0): the group keeps W (the system was singular), the others fit."""
    W = weights(6, 20, 2).repeat(2, axis=0)  # [2, 6, 20]
    rng = np.random.default_rng(3)
    X0 = rng.standard_normal((20, 300))
    X = X0 + 0.3 * rng.standard_normal(X0.shape)
    H = np.stack([X @ X.T / 300, np.zeros((20, 20))])
    C = np.stack([X0 @ X.T / 300, np.zeros((20, 20))])
    Wt = fit_to_reference(W, H, C, 0.01)
    np.testing.assert_array_equal(Wt[1], W[1])
    assert np.isfinite(Wt).all() and not np.allclose(Wt[0], W[0])


def test_sequential_with_the_dp_keeps_the_dense_allocation_and_lowers_the_error():
    one = _run(sparsity=0.7, allocate="dp", compare_baseline=False)
    seq = _run(sparsity=0.7, allocate="dp", sequential=True, compare_baseline=False)
    assert seq.report.profile["choice"] == one.report.profile["choice"]  # from the dense model
    e1 = max(one.report.fidelity["eval"]["compressed"].rel_error.values())
    e2 = max(seq.report.fidelity["eval"]["compressed"].rel_error.values())
    assert e2 < 0.95 * e1  # 0.91 (the head, 204 columns for 64 inputs, is not refitted)
    levels = seq.report.profile["choice"]
    for layer in seq.report.layers:  # each layer at its allocated level
        n = layer.rows * layer.cols
        assert abs(layer.sparsity * n - levels[layer.name] * n) <= 1


def test_a_layer_seen_in_too_few_columns_is_not_refitted():
    """The dense-output refit is a least-squares fit of d inputs per row: from fewer than
    FIT_COLUMNS * d columns (a squeeze-excite conv: one per sample) it would learn the
    calibration samples, so the weights stay as they are; from enough it runs."""
    from onnx_obc.backend import get_backend
    from onnx_obc.hessian import HessianAccumulator
    from onnx_obc.layers import constant_weights, find_layers
    from onnx_obc.solve import _matrices
    from onnx_obc.solvers.prepare import FIT_COLUMNS

    from . import builders as b

    model = b.mlp((12, 5, 3))
    L = find_layers(model)[0][0]
    weights = constant_weights(model.graph)
    rng = np.random.default_rng(0)
    for n, refit in ((FIT_COLUMNS * 12 - 1, False), (FIT_COLUMNS * 12, True)):
        X0 = rng.standard_normal((1, 12, n))
        acc = HessianAccumulator(1, 12, np)
        acc.add(X0 + 0.3 * rng.standard_normal(X0.shape), X0)  # upstream error
        acc.count(n)
        W, _ = _matrices(L, weights, acc, get_backend("cpu"), 0.01)
        dense = L.to_matrix(numpy_helper.to_array(weights[L.weight][1]))
        assert np.array_equal(W, dense) is not refit


def test_weights_alone_below_8_bits_are_sequential_by_default_and_say_so():
    """The default (run.sequential None) is sequential for weights below 8 bits, N:M or both,
    without activation grids, with OBQ / ExactOBS or GPTQ / SparseGPT, one-shot elsewhere;
    `sequential=False` (--one-shot) keeps one-shot; the footer says when the default chose it. Both give the same model as asking explicitly."""
    from onnx_obc.config import CompressConfig
    from onnx_obc.schedule import SEQUENTIAL_NOTE

    auto = _run(bits=4, method="gptq", compare_baseline=False)
    asked = _run(bits=4, method="gptq", sequential=True, compare_baseline=False)
    one = _run(bits=4, method="gptq", sequential=False, compare_baseline=False)
    assert auto.report.notes == [SEQUENTIAL_NOTE] and SEQUENTIAL_NOTE in auto.report.table()
    assert auto.report.config["run"]["sequential"] is True and asked.report.notes == []
    assert one.report.notes == [] and one.report.config["run"]["sequential"] is False
    for x, y, z in zip(auto.model.graph.initializer, asked.model.graph.initializer,
                       one.model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(x), numpy_helper.to_array(y))
    differs = [not np.array_equal(numpy_helper.to_array(x), numpy_helper.to_array(z)) for x, z
               in zip(auto.model.graph.initializer, one.model.graph.initializer)]
    assert any(differs)  # the later layers saw the compressed inputs
    for kw, seq in ((dict(bits=3), True), (dict(bits=4, group_size=32), True),
                    (dict(bits=8), False), (dict(bits=4, act_bits=8), False),
                    (dict(bits=4, sparsity=0.5), False), (dict(sparsity=0.5), False),
                    (dict(bits=4, method="rtn"), False), (dict(bits=4, channels=0.2), False),
                    (dict(sparsity=0.5, sequential_groups=2), True), (dict(nm=(2, 4)), True),
                    (dict(nm=(2, 4), method="gptq"), True), (dict(nm=(2, 4), bits=4), True),
                    (dict(nm=(2, 4), bits=8), False), (dict(nm=(2, 4), bits=4, act_bits=8), False),
                    (dict(nm=(2, 4), method="magnitude"), False),
                    (dict(bits=4, engine="ray"), False)):
        assert CompressConfig.from_options(**kw).run.sequential is seq, kw
    c = CompressConfig.from_options(bits=4)
    assert c.replace(act_bits=8).run.sequential is False  # re-resolved, as alloc.mode
    assert c.replace(act_bits=8).replace(act_bits=None).run.sequential is True
