"""Block ExactOBS (group OBS): fast == textbook oracle for any fold, rows are the oracle
states at their counts, exact block counts with global selection and the loss identity,
H = I reduces to magnitude blocks, beats magnitude on correlated H, skipping keeps the
selection, and blocks of one column are unstructured ExactOBS."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.solvers import layer_loss, prepare
from onnx_obc.solvers.baselines import block_magnitude
from onnx_obc.solvers.blocks import block_prune
from onnx_obc.solvers.structures import conv_nm_groups, linear_nm_groups

from .data import correlated_H, weights
from .oracles import block_greedy_order, greedy_order


def _block_oracle(w, Hinv, blocks):
    """Textbook group OBS on one row: scores w_B^T inv(Hinv_BB) w_B, block updates (§1.4).
    Returns (losses, order, sequential losses summed per step, states after each step)."""
    w, Hinv = w.copy(), Hinv.copy()
    free = list(range(len(blocks)))
    losses, order, seq, states = [], [], [], [w.copy()]
    for _ in range(len(blocks)):
        scores = [w[blocks[j]] @ np.linalg.solve(Hinv[np.ix_(blocks[j], blocks[j])],
                                                 w[blocks[j]]) for j in free]
        j = free.pop(int(np.argmin(scores)))
        B = blocks[j]
        w2, H2, s = w.copy(), Hinv.copy(), 0.0  # the same removal as b sequential OBS steps
        for c in B:
            s += w2[c] ** 2 / H2[c, c]
            w2 -= H2[:, c] * w2[c] / H2[c, c]
            H2 -= np.outer(H2[:, c], H2[c]) / H2[c, c]
        HBB = Hinv[np.ix_(B, B)]
        w = w - Hinv[:, B] @ np.linalg.solve(HBB, w[B])
        w[B] = 0.0
        Hinv = Hinv - Hinv[:, B] @ np.linalg.solve(HBB, Hinv[B, :])
        np.testing.assert_allclose(w, np.where(np.isin(np.arange(len(w)), B), 0.0, w2),
                                   atol=1e-9)
        losses.append(min(scores))
        order.append(j)
        seq.append(s)
        states.append(w.copy())
    return np.array(losses), np.array(order), np.array(seq), states


def _block_setup(seed, r=8, cin=8, kernel=3, b=4, damp=0.01):
    d = cin * kernel
    prep = prepare(weights(r, d, seed), correlated_H(d, seed)[None], damp)
    rows, group = prep.W[0].astype(np.float64), np.zeros(r, dtype=int)
    col_blocks = conv_nm_groups(cin, kernel, b)  # blocks not contiguous in the columns
    blocks = [np.nonzero(col_blocks == j)[0] for j in range(d // b)]
    return prep, rows, group, col_blocks, blocks


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("fold", [4, 12, 1000])  # one block per fold, several, never folded
def test_block_solver_matches_the_group_obs_oracle(seed, fold):
    prep, rows, group, col_blocks, blocks = _block_setup(seed)
    losses, order = block_greedy_order(rows, prep.Hinv, group, 3, 4, col_blocks, fold=fold)
    for i in range(rows.shape[0]):
        lo, od, seq, _ = _block_oracle(rows[i], prep.Hinv[0], blocks)
        np.testing.assert_array_equal(order[i], od)
        np.testing.assert_allclose(losses[i], lo, rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(seq, lo, rtol=1e-7, atol=1e-12)  # block = sum of sequential


def test_block_rows_are_the_oracle_states_at_their_counts():
    prep, rows, group, col_blocks, blocks = _block_setup(4)
    r, nb = rows.shape[0], len(blocks)
    count = round(0.5 * r * nb)
    W_hat, losses, order, counts = block_prune(rows, prep.Hinv, group, 3, 4, col_blocks, count)
    assert int(counts.sum()) == count
    for i in range(r):
        _, od, _, states = _block_oracle(rows[i], prep.Hinv[0], blocks)
        np.testing.assert_allclose(W_hat[i], states[counts[i]], atol=1e-8)
        removed = np.concatenate([blocks[j] for j in od[:counts[i]]] or [np.zeros(0, int)])
        assert np.all(W_hat[i][removed] == 0)


@pytest.mark.parametrize("s", [0.25, 0.5, 0.8])
def test_exact_count_of_zero_blocks_and_loss_identity(s):
    prep, rows, group, col_blocks, blocks = _block_setup(5, r=12, cin=16, damp=0.0)
    r, nb = rows.shape[0], len(blocks)
    count = round(s * r * nb)
    W_hat, losses, order, counts = block_prune(rows, prep.Hinv, group, 5, 4, col_blocks, count)
    zero_blocks = sum(int(np.all(W_hat[:, B] == 0, axis=1).sum()) for B in blocks)
    assert zero_blocks == count
    assert int((W_hat == 0).sum()) == 4 * count
    recorded = sum(float(losses[i, :counts[i]].sum()) for i in range(r))
    H = prep.H  # damp 0: the H whose inverse was used
    assert recorded == pytest.approx(layer_loss(rows[None], W_hat[None], H), rel=1e-6)


def test_identity_hessian_gives_magnitude_block_pruning():
    r, d, b = 10, 48, 4
    W = weights(r, d, 6)[0]
    col_blocks = linear_nm_groups(d, b)
    count = round(0.5 * r * d / b)
    W_hat, _, _, counts = block_prune(W, np.eye(d)[None], np.zeros(r, dtype=int), 4, b,
                                      col_blocks, count)
    mag = block_magnitude(W, col_blocks, count)
    np.testing.assert_array_equal(W_hat == 0, mag == 0)
    kept = W_hat != 0
    np.testing.assert_allclose(W_hat[kept], W[kept], rtol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_blocks_beat_magnitude_blocks_and_rows_get_different_counts(seed):
    r, d, b = 32, 64, 4
    W = weights(r, d, seed)
    H = correlated_H(d, seed)[None]
    prep = prepare(W, H, 0.01)
    rows = prep.W[0].astype(np.float64)
    col_blocks = linear_nm_groups(d, b)
    count = round(0.5 * r * d / b)
    W_hat, _, _, counts = block_prune(rows, prep.Hinv, np.zeros(r, dtype=int), 8, b,
                                      col_blocks, count)
    mag = block_magnitude(W[0], col_blocks, count)
    ratio = layer_loss(W, W_hat[None], H) / layer_loss(W, mag[None], H)
    assert ratio <= 0.6, ratio
    assert int(counts.sum()) == count and len(set(counts.tolist())) > 1  # global selection


@pytest.mark.parametrize("rows_per_batch", [64, 7])  # one batch; several (sampled threshold)
@pytest.mark.parametrize("s", [0.3, 0.5, 0.8])
def test_block_skipping_gives_the_selection_of_full_traces(rows_per_batch, s):
    from onnx_obc.solvers.select import select_counts
    from onnx_obc.solvers.blocks import block_traces

    r, d, b = 40, 48, 4
    W = np.concatenate([weights(r // 2, d, 10), 5 * weights(r // 2, d, 11)], axis=1)
    prep = prepare(W, correlated_H(d, 10)[None], 0.01)
    rows, group = prep.W[0].astype(np.float64), np.zeros(r, dtype=int)
    col_blocks = linear_nm_groups(d, b)
    count = round(s * r * d / b)
    full = block_traces(rows, prep.Hinv, group, rows_per_batch, b, col_blocks, None, fold=8)
    part = block_traces(rows, prep.Hinv, group, rows_per_batch, b, col_blocks, count, fold=8)
    assert full.steps_run == r * d // b
    if s <= 0.5:
        assert part.steps_run < full.steps_run  # work skipped
    c = select_counts(part.keys, count)
    np.testing.assert_array_equal(select_counts(full.keys, count), c)
    for i in range(r):  # the computed prefix is the same greedy
        np.testing.assert_array_equal(full.order[i, :c[i]], part.order[i, :c[i]])


def test_block_threshold_estimate_too_low_triggers_reruns(monkeypatch):
    import onnx_obc.solvers.fast as fast
    from onnx_obc.solvers.select import select_counts
    from onnx_obc.solvers.blocks import block_traces

    monkeypatch.setattr(fast, "MARGIN", 1e-3)  # rows stop far too early, then are re-run
    r, d, b = 30, 32, 4
    prep = prepare(weights(r, d, 12), correlated_H(d, 12)[None], 0.01)
    rows, group = prep.W[0].astype(np.float64), np.zeros(r, dtype=int)
    col_blocks = linear_nm_groups(d, b)
    count = round(0.5 * r * d / b)
    part = block_traces(rows, prep.Hinv, group, 6, b, col_blocks, count, fold=8)
    full = block_traces(rows, prep.Hinv, group, 6, b, col_blocks, None, fold=8)
    assert part.rerun_rows > 0
    np.testing.assert_array_equal(select_counts(full.keys, count),
                                  select_counts(part.keys, count))


def test_blocks_of_one_column_are_unstructured_exact_obs():
    d, r = 40, 6
    prep = prepare(weights(r, d, 13), correlated_H(d, 13)[None], 0.01)
    rows, group = prep.W[0].astype(np.float64), np.zeros(r, dtype=int)
    l1, o1 = greedy_order(rows, prep.Hinv, group, 4)
    l2, o2 = block_greedy_order(rows, prep.Hinv, group, 4, 1, np.arange(d), fold=16)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_allclose(l1, l2, rtol=1e-7, atol=1e-12)
