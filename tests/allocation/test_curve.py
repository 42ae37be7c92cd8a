"""The error-versus-budget curve: non-increasing in the budget, through the chosen point,
and never below the true optimum (brute force over every combination of levels)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from onnx_obc.allocation import LevelTable, allocate
from onnx_obc.allocation.curve import error_curve, least_errors


def _tables(seed: int, layers: int = 4, levels: int = 4) -> list[LevelTable]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(layers):
        n = int(rng.integers(50, 400))
        sp = np.sort(rng.uniform(0.1, 0.9, levels - 1))
        cost = (n,) + tuple(float(round(n * (1 - s))) for s in sp)
        err = (0.0,) + tuple(np.cumsum(rng.uniform(0.01, 1.0, levels - 1)))
        out.append(LevelTable(f"l{i}", (0.0, *sp), cost, err))
    return out


def _optimum(tables: list[LevelTable], budget: float) -> float:
    best = math.inf
    for pick in itertools.product(*(range(len(t.cost)) for t in tables)):
        if sum(t.cost[i] for t, i in zip(tables, pick)) <= budget + 1e-9:
            best = min(best, sum(t.error[i] for t, i in zip(tables, pick)))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curve_is_monotone_contains_the_chosen_point_and_bounds_the_optimum(seed):
    tables = _tables(seed)
    dense = sum(t.cost[0] for t in tables)
    chosen = allocate(tables, 0.5 * dense)
    curve = error_curve(tables, chosen)
    budgets = [b for b, _ in curve]
    errors = [e for _, e in curve]
    assert budgets == sorted(budgets) and len(set(budgets)) == len(budgets)
    assert all(a >= b for a, b in zip(errors, errors[1:]))  # non-increasing
    assert dict(curve)[chosen.budget] == pytest.approx(chosen.error)
    assert chosen.error == pytest.approx(_optimum(tables, chosen.budget))
    assert budgets[0] == pytest.approx(sum(min(t.cost) for t in tables))
    assert budgets[-1] == pytest.approx(dense) and errors[-1] == 0.0
    for b, e in curve:  # a real choice within each budget: never below the optimum
        opt = _optimum(tables, b)
        assert e >= opt - 1e-12
        # dp.py's guarantee: no worse than the optimum at budget - layers * q
        q = (dense - budgets[0]) / 2000
        assert e <= _optimum(tables, b - len(tables) * q) + 1e-12


def test_least_errors_is_exact_on_a_fine_grid():
    tables = _tables(5, layers=3, levels=3)
    budgets, errors = least_errors(tables, buckets=4000)
    for i in range(0, len(budgets), 97):
        assert errors[i] >= _optimum(tables, budgets[i]) - 1e-12
        assert errors[i] <= _optimum(tables, budgets[i] - 3 * (budgets[-1] - budgets[0]) / 4000)
