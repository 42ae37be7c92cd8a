"""Unstructured ExactOBS: exact reductions, recorded-loss identity, exact sparsity,
invariances, fast == plain, rebuild == greedy trace, and beating magnitude on correlated
activations."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.backend import cummax
from onnx_obc.errors import ConfigError, NotPositiveDefinite, ObcError
from onnx_obc.solvers import Unstructured, layer_loss, magnitude_prune, prepare, solve_layer
from onnx_obc.solvers.select import rebuild, select_counts

from .data import correlated_H, iid_H, weights
from .oracles import greedy_order, greedy_order_fast


def test_identity_hessian_gives_magnitude_pruning_exactly():
    W = weights(16, 48, 0)
    res = solve_layer(W, np.eye(48)[None], structure=Unstructured(0.5), damp=0.0)
    mag = magnitude_prune(W, 16 * 48 // 2)
    np.testing.assert_array_equal(res.W == 0, mag == 0)
    kept = res.W != 0
    np.testing.assert_allclose(res.W[kept], W[kept], rtol=1e-6)  # H = I: no compensation


@pytest.mark.parametrize("seed", range(3))
def test_recorded_losses_sum_to_measured_layer_loss(seed):
    d, r = 40, 12
    H = correlated_H(d, seed)[None]
    W = weights(r, d, seed)
    res = solve_layer(W, H, structure=Unstructured(0.6), damp=0.0)
    assert res.loss == pytest.approx(res.obs_loss, rel=1e-4)
    # and the measured loss is the calibration output error (1/N)||dW X||^2
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((d, 8)) @ rng.standard_normal((8, 300))
    Hx = (X @ X.T / 300)[None]
    res2 = solve_layer(W, Hx, structure=Unstructured(0.6), damp=0.0)
    direct = np.sum(((res2.W[0] - W[0]) @ X) ** 2) / 300
    assert res2.loss == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize("s", [0.1, 0.37, 0.5, 0.9])
def test_sparsity_is_exact(s):
    W = weights(10, 33, 1)
    res = solve_layer(W, correlated_H(33, 1)[None], structure=Unstructured(s))
    assert res.zeros == round(s * W.size)
    assert int((res.W == 0).sum()) == res.zeros


def test_scale_invariance():
    W = weights(8, 30, 2)
    H = correlated_H(30, 2)[None]
    a = solve_layer(W, H, structure=Unstructured(0.5))
    b = solve_layer(W, 1e4 * H, structure=Unstructured(0.5))
    np.testing.assert_array_equal(a.W == 0, b.W == 0)
    np.testing.assert_allclose(a.W, b.W, rtol=1e-4, atol=1e-6)
    assert b.loss == pytest.approx(1e4 * a.loss, rel=1e-4)


def test_row_permutation_equivariance():
    W = weights(9, 24, 3)
    H = correlated_H(24, 3)[None]
    perm = np.random.default_rng(0).permutation(9)
    a = solve_layer(W, H, structure=Unstructured(0.5))
    b = solve_layer(W[:, perm], H, structure=Unstructured(0.5))
    np.testing.assert_array_equal(a.W[:, perm] == 0, b.W == 0)


@pytest.mark.parametrize("seed", range(3))
def test_fast_solver_makes_the_same_decisions_as_the_plain_one(seed):
    d, r = 70, 9  # d not a multiple of the fold block
    prep = prepare(weights(r, d, seed), correlated_H(d, seed)[None], 0.01)
    rows, group = prep.W[0].astype(np.float64), np.zeros(r, dtype=int)
    l1, o1 = greedy_order(rows, prep.Hinv, group, rows_per_batch=4)
    l2, o2 = greedy_order_fast(rows, prep.Hinv, group, rows_per_batch=5, block=16)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_allclose(l1, l2, rtol=1e-5, atol=1e-12)


def _eager_state(w, Hinv, steps):
    """Row after `steps` greedy OBS removals, by the textbook loop."""
    w, Hinv = w.copy(), Hinv.copy()
    free = np.ones_like(w, dtype=bool)
    for _ in range(steps):
        score = np.where(free, w**2 / np.where(free, np.diag(Hinv), 1), np.inf)
        q = int(np.argmin(score))
        w -= Hinv[:, q] * w[q] / Hinv[q, q]
        w[q] = 0
        free[q] = False
        Hinv = Hinv - np.outer(Hinv[:, q], Hinv[q]) / Hinv[q, q]
    return w


def test_rebuild_equals_the_greedy_trace():
    d, r = 30, 6
    prep = prepare(weights(r, d, 4), correlated_H(d, 4)[None], 0.01)
    rows = prep.W[0].astype(np.float64)
    group = np.zeros(r, dtype=int)
    _, order = greedy_order(rows, prep.Hinv, group, rows_per_batch=r)
    counts = np.array([0, 1, 7, 15, 29, 30])
    out = rebuild(rows, prep.Hinv, group, order, counts, rows_per_batch=4)
    for i in range(r):
        np.testing.assert_allclose(out[i], _eager_state(rows[i], prep.Hinv[0], counts[i]),
                                   atol=1e-8)
        assert int((out[i] == 0).sum()) == counts[i]


def test_select_counts_prefixes_and_total():
    rng = np.random.default_rng(0)
    losses = rng.random((5, 12))
    for count in (0, 1, 17, 59, 60):
        c = select_counts(cummax(losses, axis=1), count)
        assert int(c.sum()) == count
    key = cummax(losses, axis=1)
    c = select_counts(key, 23)
    thr = max(key[i, c[i] - 1] for i in range(5) if c[i])
    assert all(c[i] == 12 or key[i, c[i]] >= thr for i in range(5))  # rest are not cheaper


@pytest.mark.parametrize("seed", range(8))
def test_beats_magnitude_on_correlated_activations(seed):
    W = weights(32, 64, seed)
    res = solve_layer(W, correlated_H(64, seed)[None], structure=Unstructured(0.5))
    assert res.loss <= 0.5 * res.baseline_loss, res.loss / res.baseline_loss


@pytest.mark.parametrize("seed", range(4))
def test_not_worse_than_magnitude_on_iid_activations(seed):
    W = weights(32, 64, seed)
    res = solve_layer(W, iid_H(64, seed)[None], structure=Unstructured(0.5))
    assert res.loss <= 1.0 * res.baseline_loss


def test_dead_inputs_are_zeroed_and_reported():
    d = 20
    rng = np.random.default_rng(5)
    X = rng.standard_normal((d, 200))
    X[[3, 11]] = 0.0
    H = (X @ X.T / 200)[None]
    W = weights(6, d, 5)
    res = solve_layer(W, H, structure=Unstructured(0.3))
    assert res.dead == 2
    assert np.all(res.W[0][:, [3, 11]] == 0)
    assert res.zeros == round(0.3 * W.size)


def test_a_group_of_denormal_inputs_is_dead_not_nan():
    """PP-OCRv6's detector: depthwise channels whose activations and weights are ~1e-40
    (H_jj ~ 1e-79). Dampened relative to their own group, H^-1 passed float32's range and
    the 50% allocation's loss traces went NaN; now those inputs are dead (weights 0, loss 0
    on the data) and everything stays finite."""
    from onnx_obc.solvers import traces

    rng = np.random.default_rng(6)
    X = rng.standard_normal((8, 9, 300))
    X[[2, 5]] *= 1e-40
    H = X @ X.transpose(0, 2, 1) / 300  # [8, 9, 9]: one group per channel
    W = weights(8, 9, 6).reshape(8, 1, 9)
    W[[2, 5]] *= 1e-40
    res = solve_layer(W, H, structure=Unstructured(0.5))
    assert res.dead == 18 and np.isfinite(res.W).all() and np.isfinite(res.loss)
    assert np.all(res.W[[2, 5]] == 0)
    tr = traces(W, H, Unstructured(0.0), 0.95)
    assert all(np.isfinite(tr.at(s).loss) for s in (0.5, 0.9, 0.95))


def test_grouped_hessians_select_globally():
    r, d = 4, 9
    H = np.stack([correlated_H(d, 6), 100 * correlated_H(d, 7)])  # group 1 is costlier
    W = np.random.default_rng(6).standard_normal((2, r, d))
    res = solve_layer(W, H, structure=Unstructured(0.5))
    z = (res.W == 0).sum(axis=(1, 2))
    assert int(z.sum()) == round(0.5 * W.size)
    assert z[0] > z[1]  # the cheap group gives up more weights
    assert res.loss == pytest.approx(layer_loss(W, res.W, H), rel=1e-12)


def test_singular_hessian_escalates_dampening_and_reports_it():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((3, 100))
    X = np.vstack([X, X, X])  # rank 3 in 9 dims
    H = (X @ X.T / 100)[None]
    res = solve_layer(weights(4, 9, 7), H, structure=Unstructured(0.5), damp=0.0)
    assert res.escalations and res.escalations[0] == 0.0
    assert res.damp > 0.0


def test_non_finite_hessian_is_a_clear_error():
    H = np.eye(4)[None].copy()
    H[0, 1, 1] = np.nan
    with pytest.raises(ObcError, match="NaN or inf"):
        prepare(weights(2, 4, 0), H, 0.01)


def test_indefinite_hessian_raises_not_positive_definite():
    H = np.eye(4)[None] + 10.0 * (np.ones((4, 4)) - np.eye(4))[None]  # eigenvalue -29
    with pytest.raises(NotPositiveDefinite, match="dampening"):
        prepare(weights(2, 4, 0), H, 0.0)


def test_existing_zeros_count_towards_the_target():
    W = weights(6, 20, 8)
    W[0, :, :5] = 0.0  # 25% already zero
    res = solve_layer(W, correlated_H(20, 8)[None], structure=Unstructured(0.5))
    assert res.zeros == 60
    assert np.all(res.W[0][:, :5] == 0)


def test_magnitude_method_returns_the_baseline():
    W = weights(6, 20, 9)
    res = solve_layer(W, correlated_H(20, 9)[None], structure=Unstructured(0.4),
                      method="magnitude")
    assert res.loss == res.baseline_loss
    np.testing.assert_array_equal(res.W, magnitude_prune(W, 48))


def _selection(tr, count):
    return select_counts(tr.keys, count)


@pytest.mark.parametrize("rows_per_batch", [64, 7])  # one batch; several (sampled threshold)
@pytest.mark.parametrize("s", [0.3, 0.5, 0.8])
def test_skipping_rows_gives_the_selection_of_full_traces(rows_per_batch, s):
    from onnx_obc.solvers.fast import greedy_traces

    d, r = 48, 40
    W = np.concatenate([weights(r // 2, d, 10), 5 * weights(r // 2, d, 11)], axis=1)  # uneven rows
    prep = prepare(W, correlated_H(d, 10)[None], 0.01)
    rows, group = prep.W[0].astype(np.float64), np.zeros(r, dtype=int)
    count = round(s * r * d)
    full = greedy_traces(rows, prep.Hinv, group, rows_per_batch, None, block=16)
    part = greedy_traces(rows, prep.Hinv, group, rows_per_batch, count, block=16)
    assert full.steps_run == r * d
    assert part.steps_run < r * d if s <= 0.5 else part.steps_run <= r * d  # work skipped
    np.testing.assert_array_equal(_selection(full, count), _selection(part, count))
    c = _selection(part, count)
    for i in range(r):  # the computed prefix is the same greedy
        np.testing.assert_array_equal(full.order[i, :c[i]], part.order[i, :c[i]])


def test_a_threshold_estimate_that_is_too_low_triggers_reruns(monkeypatch):
    import onnx_obc.solvers.fast as fast

    monkeypatch.setattr(fast, "MARGIN", 1e-3)  # absurdly optimistic: rows stop far too early
    d, r = 32, 30
    prep = prepare(weights(r, d, 12), correlated_H(d, 12)[None], 0.01)
    rows, group = prep.W[0].astype(np.float64), np.zeros(r, dtype=int)
    count = round(0.5 * r * d)
    part = fast.greedy_traces(rows, prep.Hinv, group, 6, count, block=16)
    full = fast.greedy_traces(rows, prep.Hinv, group, 6, None, block=16)
    assert part.rerun_rows > 0
    np.testing.assert_array_equal(_selection(full, count), _selection(part, count))


@pytest.mark.parametrize("structured", [False, True])
def test_quantizing_a_given_pruned_solution_is_the_compound_run(structured):
    """`pruned=` skips the pruning stage and changes nothing: one pruned layer quantized at
    several bit widths (the mixed levels) gives what the compound runs give."""
    from onnx_obc.quant import QuantSpec
    from onnx_obc.solvers import NM, linear_nm_groups

    W = weights(24, 64, 7)
    H = correlated_H(64, 7)[None]
    kw = dict(structure=NM(2, 4).on_columns(linear_nm_groups(64, 4)) if structured
              else Unstructured(0.5))
    alone = solve_layer(W, H, **kw)
    for bits in (8, 4):
        both = solve_layer(W, H, quant=QuantSpec(bits=bits), **kw)
        reused = solve_layer(W, H, quant=QuantSpec(bits=bits), pruned=alone, **kw)
        np.testing.assert_array_equal(reused.W, both.W)
        np.testing.assert_array_equal(reused.codes, both.codes)
        assert reused.loss == both.loss and reused.prune_loss == both.prune_loss
    with pytest.raises(ConfigError, match="pruned"):
        solve_layer(W, H, quant=QuantSpec(bits=4),
                    pruned=solve_layer(W, H, structure=Unstructured(0.25)),
                    structure=Unstructured(0.5))
