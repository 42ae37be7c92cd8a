"""Spreading a FLOP cut over the sites (channels/allocate.py): the DP is exact (equals brute
force over the traces' prefixes), never worse than the greedy or uniform choice on the same
traces, and beats uniform where the sites differ in sensitivity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnx_obc.channels.allocate import allowed, counts, loss_curve
from onnx_obc.errors import ConfigError
from onnx_obc.solvers.channels import ChannelTrace


def _traces(sizes, seed):
    """Greedy-like traces: increasing increments (convex-ish with noise), random scales."""
    rng = np.random.default_rng(seed)
    out = []
    for C in sizes:
        inc = np.sort(rng.random(C - 1)) * rng.choice([0.1, 1.0, 10.0]) + 0.01 * rng.random(C - 1)
        rng.shuffle(inc[: (C - 1) // 3])  # not exactly sorted: the greedy is not optimal
        out.append(ChannelTrace(np.arange(C - 1), inc))
    return out


def _objective(traces, energies, ks):
    return sum(loss_curve(t, e)[k] for t, e, k in zip(traces, energies, ks))


def _brute(traces, energies, flops, goal, channels, align):
    best, arg = np.inf, None
    opts = [allowed(len(t.losses), C, align) for t, C in zip(traces, channels)]
    for ks in itertools.product(*opts):
        if sum(k * f for k, f in zip(ks, flops)) >= goal:
            v = _objective(traces, energies, ks)
            if v < best - 1e-12:
                best, arg = v, list(ks)
    return best, arg


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("align", [1, 2])
def test_dp_equals_brute_force(seed, align):
    channels = [6, 8, 5]
    traces = _traces(channels, seed)
    rng = np.random.default_rng(100 + seed)
    energies = list(1 + rng.random(3))
    flops = [int(x) for x in rng.integers(1, 9, 3)]
    goal = 0.4 * sum((C - 1) * f for C, f in zip(channels, flops))
    best, _ = _brute(traces, energies, flops, goal, channels, align)
    ks = counts("dp", traces, energies, flops, goal, channels, align)
    assert sum(k * f for k, f in zip(ks, flops)) >= goal
    assert all((C - k) % align == 0 or k == 0 for k, C in zip(ks, channels))
    assert _objective(traces, energies, ks) == pytest.approx(best, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", range(8))
def test_dp_is_never_worse_than_greedy_or_uniform(seed):
    channels = [16, 24, 32, 12, 40]
    traces = _traces(channels, seed)
    rng = np.random.default_rng(seed)
    energies = list(0.5 + rng.random(5))
    flops = [int(x) for x in rng.integers(10, 200, 5)]
    goal = 0.3 * sum(C * f for C, f in zip(channels, flops))
    got = {m: counts(m, traces, energies, flops, goal, channels, 4)
           for m in ("dp", "greedy", "uniform")}
    for m, ks in got.items():
        assert sum(k * f for k, f in zip(ks, flops)) >= goal, m
    dp = _objective(traces, energies, got["dp"])
    assert dp <= _objective(traces, energies, got["greedy"]) + 1e-12
    assert dp <= _objective(traces, energies, got["uniform"]) + 1e-12


def test_dp_beats_uniform_when_sensitivities_differ():
    """One site is 100x as sensitive per channel: uniform cuts it as much as the others."""
    channels, flops = [20, 20, 20], [10, 10, 10]
    traces = [ChannelTrace(np.arange(19), s * np.linspace(0.1, 1.0, 19))
              for s in (100.0, 1.0, 1.0)]
    goal = 0.3 * 600
    dp = _objective(traces, [1.0] * 3, counts("dp", traces, [1.0] * 3, flops, goal, channels))
    uni = _objective(traces, [1.0] * 3,
                     counts("uniform", traces, [1.0] * 3, flops, goal, channels))
    assert dp < 0.1 * uni, (dp, uni)


def test_unknown_method_is_refused():
    with pytest.raises(ConfigError, match="dp, greedy, uniform"):
        counts("best", _traces([4], 0), [1.0], [1.0], 1.0, [4])


@pytest.mark.parametrize("seed", range(4))
def test_dp_by_measured_saving_equals_brute_force(seed):
    """by_saving (the latency budget's DP): exact over the traces' prefixes when the curves
    are integers whose maxima sum to a divisor of BUCKETS (the lattice is then exact), with
    savings that are not proportional to k."""
    from onnx_obc.channels.allocate import by_saving

    rng = np.random.default_rng(seed)
    traces = _traces([4, 5, 6, 4], seed)
    energies = list(rng.uniform(0.5, 2.0, len(traces)))
    curves = []
    for t in traces:  # each site's largest saving is 25 (sum 100), reached at its last step
        c = np.concatenate([[0], np.sort(rng.integers(0, 25, len(t.losses) - 1)), [25]])
        curves.append(c.astype(float))
    for goal in (20.0, 50.0, 83.0):
        ks = by_saving("dp", traces, energies, curves, goal, [1] * 4)
        assert sum(c[k] for c, k in zip(curves, ks)) >= goal
        best = min(_objective(traces, energies, p)
                   for p in itertools.product(*[range(len(c)) for c in curves])
                   if sum(c[k] for c, k in zip(curves, p)) >= goal)
        assert _objective(traces, energies, ks) == pytest.approx(best, rel=1e-9, abs=1e-12)
        uni = by_saving("uniform", traces, energies, curves, goal, [1] * 4)
        assert sum(c[k] for c, k in zip(curves, uni)) >= goal
    with pytest.raises(ConfigError):
        by_saving("greedy", traces, energies, curves, 10.0, [1] * 4)
