"""Channel traces on block-diagonal problems (solvers/chanparts.py): split into its blocks,
the greedy takes the same channels with the same losses as on the whole matrix, the joint
update is the same, and the losses still sum to the measured consumer loss."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.solvers import chanparts
from onnx_obc.solvers.chanparts import components, worth_splitting
from onnx_obc.solvers.channels import block_diagonal, channel_major, channel_trace, obs_update


def _block(r, d, seed):
    """One reader's W [r, d] and dampened H [d, d] on correlated inputs."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((600, 5)) @ rng.standard_normal((5, d)) + 0.3 * rng.standard_normal(
        (600, d))
    H = X.T @ X / 600
    H += 0.01 * np.mean(np.diag(H)) * np.eye(d)
    return rng.standard_normal((r, d)), H


def _fanout(C=12, widths=(9, 1, 9), rows=(5, 4, 6), offsets=(0, 0, 3), spans=None):
    """The block-diagonal problem channels/fanout.readers builds: each reader's own W and
    H (reader i reads spans[i] channels, the site's from offsets[i] on), rows stacked,
    columns channel-major."""
    spans = spans or [C + o for o in offsets]
    parts = [_block(r, s * w, seed) for seed, (r, w, s) in enumerate(zip(rows, widths, spans))]
    d = sum(p[0].shape[1] for p in parts)
    W, H = np.zeros((sum(rows), d)), np.zeros((d, d))
    at = col = 0
    for w, h in parts:
        W[at:at + w.shape[0], col:col + w.shape[1]] = w
        H[col:col + w.shape[1], col:col + w.shape[1]] = h
        at, col = at + w.shape[0], col + w.shape[1]
    order = channel_major(widths, C, offsets, spans)
    return W[:, order], H[order][:, order], sum(widths)


def _dense(monkeypatch):
    monkeypatch.setattr(chanparts, "WORTH", 0.0)  # never split: the whole matrix


def _loss(W, H, new):
    dW = new - W
    return float(np.trace(dW @ H @ dW.T))


def test_components_of_a_permuted_block_diagonal_matrix():
    _, H, _ = _fanout()
    comps = components(np.linalg.inv(H))
    assert sorted(len(c) for c in comps) == [12, 12 * 9, 15 * 9]
    assert [len(c) for c in components(np.linalg.inv(_block(2, 20, 7)[1]))] == [20]
    assert not worth_splitting([np.arange(20), np.array([20])], 21)  # a dead input alone


@pytest.mark.parametrize("count", [None, 7])
def test_readers_split_take_the_same_channels_as_the_whole_matrix(monkeypatch, count):
    W, H, width = _fanout()
    Hinv = np.linalg.inv(H)
    assert worth_splitting(components(Hinv), W.shape[1])
    first = 0 if count is None else 2
    split = channel_trace(W, Hinv, width, 10, first=first, count=count)
    _dense(monkeypatch)
    whole = channel_trace(W, Hinv, width, 10, first=first, count=count)
    np.testing.assert_array_equal(split.order, whole.order)
    np.testing.assert_allclose(split.losses, whole.losses, rtol=1e-9, atol=1e-12)


def test_split_losses_sum_to_the_measured_loss_and_the_update_is_the_whole_ones(monkeypatch):
    W, H, width = _fanout()
    Hinv = np.linalg.inv(H)
    tr = channel_trace(W, Hinv, width, 8)
    for k in (1, 4, 8):
        new = obs_update(W, Hinv, width, tr.order[:k])
        assert tr.losses[:k].sum() == pytest.approx(_loss(W, H, new), rel=1e-8)
        cols = (tr.order[:k, None] * width + np.arange(width)).ravel()
        assert np.all(new[:, cols] == 0)
    _dense(monkeypatch)
    np.testing.assert_allclose(obs_update(W, Hinv, width, tr.order[:8]), new, atol=1e-10)


@pytest.mark.parametrize("G", [2, 4])
def test_a_grouped_consumer_split_by_group_takes_the_same_channels(monkeypatch, G):
    per, width = 6, 3
    Ws, Hs = zip(*(_block(5, per * width, seed) for seed in range(G)))
    W, Hinv = block_diagonal(np.stack(Ws)), block_diagonal(np.stack([np.linalg.inv(h)
                                                                      for h in Hs]))
    split = channel_trace(W, Hinv, width, G * 4, blocks=G)
    _dense(monkeypatch)
    whole = channel_trace(W, Hinv, width, G * 4, blocks=G)
    np.testing.assert_array_equal(split.order, whole.order)
    np.testing.assert_allclose(split.losses, whole.losses, rtol=1e-9, atol=1e-12)
    taken = np.bincount(split.order // per, minlength=G)
    assert np.all(taken == 4)  # as many from each group



def _greedy(W, Hinv, width, steps, first, count):
    """The greedy on the whole inverse, written plainly: the reference."""
    W, Hinv = W.astype(np.float64).copy(), Hinv.copy()
    alive, order, losses = list(range(first, first + count)), [], []
    for _ in range(steps):
        best = None
        for c in alive:
            S = np.arange(c * width, c * width + width)
            L = np.trace(W[:, S] @ np.linalg.solve(Hinv[np.ix_(S, S)], W[:, S].T))
            best = (L, c) if best is None or L < best[0] else best
        L, c = best
        S = np.arange(c * width, c * width + width)
        R = np.linalg.solve(Hinv[np.ix_(S, S)], Hinv[S, :])
        W -= W[:, S] @ R
        Hinv -= Hinv[:, S] @ R
        alive.remove(c)
        order.append(c - first)
        losses.append(L)
    return np.array(order), np.array(losses)


def test_a_concat_inputs_trace_keeps_only_its_block_and_equals_the_whole_greedy():
    """One input of a Concat (channels first .. first + count - 1 may go): the trace keeps
    only those columns' block of Hinv, compacted as channels go (solvers.channels.COMPACT),
    and takes what the greedy on all of it takes."""
    W, H = _block(6, 14 * 3, seed=5)
    tr = channel_trace(W, np.linalg.inv(H), 3, 7, first=5, count=7)
    order, losses = _greedy(W, np.linalg.inv(H), 3, 7, 5, 7)
    np.testing.assert_array_equal(tr.order, order)
    np.testing.assert_allclose(tr.losses, losses, rtol=1e-8)


def test_one_column_blocks_solve_by_the_reciprocal():
    """w = 1 (a MatMul consumer's channels): D^-1 B as a product with 1 / D, what LAPACK's
    solve gives (to the last bit with OpenBLAS; within rounding anywhere)."""
    rng = np.random.default_rng(4)
    D, B = rng.random((50, 1, 1)) + 0.1, rng.standard_normal((50, 1, 30))
    np.testing.assert_allclose(chanparts._solve(D, B), np.linalg.solve(D, B), rtol=1e-15)
    D3 = rng.random((5, 3, 3)) + 3 * np.eye(3)
    np.testing.assert_array_equal(chanparts._solve(D3, B[:5].repeat(3, 1)),
                                  np.linalg.solve(D3, B[:5].repeat(3, 1)))


@pytest.mark.parametrize("lazy", [1, 5])
def test_held_back_downdates_folded_often_take_the_same_channels(monkeypatch, lazy):
    """Lazy's downdates folded into the inverse every `lazy` columns (several times a trace,
    between the compactions) give the greedy on the whole inverse."""
    monkeypatch.setattr(chanparts, "LAZY", lazy)
    W, H = _block(5, 16 * 2, seed=9)
    tr = channel_trace(W, np.linalg.inv(H), 2, 12)
    order, losses = _greedy(W, np.linalg.inv(H), 2, 12, 0, 16)
    np.testing.assert_array_equal(tr.order, order)
    np.testing.assert_allclose(tr.losses, losses, rtol=1e-8)
