"""Group OBS over whole input channels (solvers/channels.py): greedy losses sum to the
measured consumer loss, the update zeroes the channels, the greedy's first pick is the
brute-force best, and OBS beats the norm baseline on correlated inputs."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.solvers.channels import (
    ChannelTrace,
    channel_trace,
    norm_order,
    obs_update,
    output_energy,
    select_channels,
)


def _problem(r=6, C=10, width=3, n=400, seed=0):
    rng = np.random.default_rng(seed)
    d = C * width
    X = rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) + 0.2 * rng.standard_normal(
        (n, d))  # correlated inputs
    H = X.T @ X / n
    H += 0.01 * np.mean(np.diag(H)) * np.eye(d)
    W = rng.standard_normal((r, d)).astype(np.float32)
    return W, H, np.linalg.inv(H), width


@pytest.mark.parametrize("width", [1, 3])
def test_greedy_losses_sum_to_the_measured_loss(width):
    W, H, Hinv, w = _problem(width=width)
    tr = channel_trace(W, Hinv, w, 6)
    for k in (1, 3, 6):
        new = obs_update(W.astype(np.float64), Hinv, w, tr.order[:k])
        dW = new - W
        assert tr.losses[:k].sum() == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-6)
        cols = (tr.order[:k, None] * w + np.arange(w)).ravel()
        assert np.all(new[:, cols] == 0)


def test_first_pick_is_the_brute_force_best():
    W, _, Hinv, w = _problem()
    W = W.astype(np.float64)
    losses = []
    for c in range(W.shape[1] // w):
        S = np.arange(c * w, c * w + w)
        losses.append(np.trace(W[:, S] @ np.linalg.inv(Hinv[np.ix_(S, S)]) @ W[:, S].T))
    tr = channel_trace(W, Hinv, w, 1)
    assert tr.order[0] == int(np.argmin(losses))
    assert tr.losses[0] == pytest.approx(min(losses), rel=1e-8)


def test_update_beats_zeroing_the_norm_choice():
    W, H, Hinv, w = _problem(seed=2)
    k = 5
    tr = channel_trace(W, Hinv, w, k)
    rows = np.random.default_rng(3).standard_normal((W.shape[1] // w, 7))
    base = norm_order(rows)[:k]
    cols = (base[:, None] * w + np.arange(w)).ravel()
    dW = np.zeros_like(W, dtype=np.float64)
    dW[:, cols] = -W[:, cols]
    norm_loss = np.trace(dW @ H @ dW.T)
    assert tr.losses.sum() < 0.3 * norm_loss
    assert output_energy(W, H) == pytest.approx(np.trace(W @ H @ W.T), rel=1e-6)


def test_select_channels_by_normalised_loss_per_flop():
    a = ChannelTrace(np.arange(3), np.array([1.0, 3.0, 4.0]))
    b = ChannelTrace(np.arange(3), np.array([10.0, 10.0, 10.0]))
    # per FLOP: a costs 0.5, 1.5, 2 (its FLOPs double), b (10x energy) 1 each
    assert select_channels([a, b], [1.0, 10.0], [2.0, 1.0], target_flops=4.0) == [1, 2]
    assert select_channels([a, b], [1.0, 10.0], [1.0, 1.0], target_flops=100.0) == [3, 3]


def test_align_keeps_multiples():
    a = ChannelTrace(np.arange(11), np.ones(11))
    b = ChannelTrace(np.arange(7), np.full(7, 100.0))
    taken = select_channels([a, b], [1.0, 1.0], [1.0, 1.0], 5.0, channels=[12, 8], align=4)
    assert taken == [8, 0]  # 12 -> 8 -> 4 channels kept, never 7 or 5
    assert select_channels([a, b], [1.0, 1.0], [1.0, 1.0], 100.0, channels=[12, 8],
                           align=4) == [8, 4]


@pytest.mark.parametrize("blocks", [2, 5])
def test_blocks_give_one_channel_of_each_a_round(blocks):
    """A grouped producer's channels (`blocks` equal runs): every multiple of `blocks` steps
    holds as many of each run, the losses still sum to the measured loss, and the norm
    baseline takes its rounds alike."""
    W, H, Hinv, w = _problem(width=2)
    tr = channel_trace(W, Hinv, w, 10, blocks)
    per = 10 // blocks
    for k in range(blocks, 11, blocks):
        assert np.bincount(tr.order[:k] // per, minlength=blocks).tolist() == [k // blocks] * blocks
        new = obs_update(W.astype(np.float64), Hinv, w, tr.order[:k])
        dW = new - W
        assert tr.losses[:k].sum() == pytest.approx(np.trace(dW @ H @ dW.T), rel=1e-6)
    first = channel_trace(W, Hinv, w, 1)  # the first pick is unconstrained either way
    assert tr.order[0] == first.order[0]
    rows = np.random.default_rng(1).standard_normal((10, 3))
    order = norm_order(rows, blocks)
    norms = np.linalg.norm(rows, axis=1)
    for r in range(per):  # round r: the r-th smallest of each run, ascending
        rnd = order[r * blocks:(r + 1) * blocks]
        assert sorted(rnd // per) == list(range(blocks))
        assert list(norms[rnd]) == sorted(norms[rnd])
        for c in rnd:
            run = norms[(c // per) * per:(c // per + 1) * per]
            assert (run < norms[c]).sum() == r
    assert norm_order(rows).tolist() == np.argsort(norms, kind="stable").tolist()
