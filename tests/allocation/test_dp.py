"""Per-layer level allocation: the DP against brute force (feasible, never worse than the
provable rounding bound, exact on an exact grid), zero-cost levels, infeasible budgets, ties,
monotonicity, target budgets, error normalisation and profile files."""

from __future__ import annotations

import doctest
import itertools
import json
from fractions import Fraction

import numpy as np
import pytest

import onnx_obc.allocation.dp as allocate_mod
from onnx_obc.allocation import (Level, LevelTable, allocate, load_profile, normalized_errors,
                                 save_profile, target_budget)
from onnx_obc.errors import ConfigError


def _tables(C: np.ndarray, E: np.ndarray) -> list[LevelTable]:
    return [LevelTable(f"l{i}", tuple(np.linspace(0, 0.9, C.shape[1])), tuple(C[i]),
                       tuple(E[i])) for i in range(C.shape[0])]


def _brute(C: np.ndarray, E: np.ndarray):
    """All level combinations: (index rows, total costs, total errors)."""
    L, S = C.shape
    combos = np.array(list(itertools.product(range(S), repeat=L)))
    rows = np.arange(L)
    return combos, C[rows, combos].sum(axis=1), E[rows, combos].sum(axis=1)


def _opt(costs: np.ndarray, errors: np.ndarray, limit: float) -> float:
    ok = costs <= limit
    return float(errors[ok].min()) if ok.any() else np.inf


def _random_case(rng: np.random.Generator, L: int = 4, S: int = 4):
    C = rng.uniform(0, 10, (L, S))
    E = rng.uniform(0, 1, (L, S))
    if rng.random() < 0.3:  # integer costs/errors: ties and zero-cost levels
        C = rng.integers(0, 5, (L, S)).astype(float)
        E = rng.integers(0, 3, (L, S)).astype(float)
    return C, E


@pytest.mark.parametrize("buckets", [10000, 100, 7])
def test_dp_against_brute_force(buckets):
    """Provable: cost <= budget; error >= opt(budget) (it is feasible); error <=
    opt(budget - L*q) with q = (budget - min_total)/buckets, hence also <= opt(budget -
    L*budget/buckets)."""
    rng = np.random.default_rng(buckets)
    exact_hits = 0
    for _ in range(200):
        C, E = _random_case(rng)
        L = C.shape[0]
        combos, costs, errors = _brute(C, E)
        lo, hi = C.min(axis=1).sum(), C.max(axis=1).sum()
        budget = float(rng.uniform(lo, hi))
        a = allocate(_tables(C, E), budget, buckets=buckets)
        picks = [int(round(a.choice[f"l{i}"] / 0.3)) for i in range(L)]
        chosen = sum((Fraction(float(C[i, s])) for i, s in enumerate(picks)), Fraction(0))
        assert chosen <= Fraction(budget) and a.cost == float(chosen) and a.cost <= budget
        assert a.error == pytest.approx(E[np.arange(L), picks].sum(), abs=1e-12)
        best = _opt(costs, errors, budget)
        assert a.error >= best - 1e-12
        q = (budget - lo) / buckets
        assert a.error <= _opt(costs, errors, budget - L * q) + 1e-12
        assert a.error <= _opt(costs, errors, budget - L * budget / buckets) + 1e-12
        exact_hits += a.error <= best + 1e-12
    if buckets == 10000:
        assert exact_hits >= 195  # in practice the grid is fine enough to be exact


def test_exact_grid_equals_brute_force():
    """Integer costs and buckets = budget - min_total: the grid is exact, so is the DP."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        C = rng.integers(0, 20, (4, 4)).astype(float)
        E = rng.uniform(0, 1, (4, 4))
        _, costs, errors = _brute(C, E)
        lo, hi = int(C.min(axis=1).sum()), int(C.max(axis=1).sum())
        budget = int(rng.integers(lo, hi + 1))
        a = allocate(_tables(C, E), budget, buckets=max(1, budget - lo))
        assert a.error == pytest.approx(_opt(costs, errors, budget), abs=1e-12)


def test_integer_costs_are_solved_exactly_whatever_the_buckets():
    """Integer costs run on the gcd lattice: the optimum even at a budget that a combination
    meets exactly (e.g. every layer at W4A8 for a 32x BOP target), with buckets=7."""
    rng = np.random.default_rng(11)
    for _ in range(100):
        C = rng.integers(1, 40, (4, 4)).astype(float) * 16
        E = rng.uniform(0, 1, (4, 4))
        combos, costs, errors = _brute(C, E)
        budget = float(costs[rng.integers(len(costs))])  # tight: some choice costs exactly it
        a = allocate(_tables(C, E), budget, buckets=7)
        assert a.cost <= budget and a.error == pytest.approx(_opt(costs, errors, budget),
                                                              abs=1e-12)


def test_zero_cost_levels_are_used():
    # tiny rounds to 0 buckets of budget/10000 in the reference, which then skips it
    for tiny in (0.0, 2.0 ** -14):  # 2**-14: exact in binary, so 10 + tiny is too
        a = LevelTable("a", (0.0, 0.99), (10.0, tiny), (0.0, 0.1))
        b = LevelTable("b", (0.0, 0.5), (10.0, 9.0), (0.0, 5.0))
        r = allocate([a, b], 10.0 + tiny)
        assert r.choice == {"a": 0.99, "b": 0.0}
        assert r.error == pytest.approx(0.1) and r.cost <= r.budget


def test_budget_equal_to_minimum_and_all_fit():
    a = LevelTable("a", (0.0, 0.5, 0.6), (4.0, 1.0, 1.0), (0.0, 2.0, 1.0))
    b = LevelTable("b", (0.0, 0.5), (3.0, 2.0), (0.0, 1.0))
    r = allocate([a, b], 3.0)  # zero slack: only the cheapest levels, best error among them
    assert r.choice == {"a": 0.6, "b": 0.5} and r.cost == 3.0 and r.error == 2.0
    r = allocate([a, b], 7.0)  # everything fits: per-layer minimum error
    assert r.choice == {"a": 0.0, "b": 0.0} and r.cost == 7.0


def test_infeasible_budget_names_the_numbers():
    a = LevelTable("a", (0.0, 0.5), (20.0, 10.0), (0.0, 1.0))
    b = LevelTable("b", (0.0, 0.5), (20.0, 12.5), (0.0, 1.0))
    with pytest.raises(ConfigError, match=r"minimum achievable cost .* is 22\.5.*budget asked "
                                          r"is 15"):
        allocate([a, b], 15.0)


def test_ties_prefer_lower_cost_then_first_listed():
    a = LevelTable("a", (0.0, 0.5, 0.6), (3.0, 2.0, 2.0), (0.5, 0.5, 0.5))
    b = LevelTable("b", (0.0, 0.5), (5.0, 1.0), (0.0, 0.3))
    c = LevelTable("c", (0.0, 0.5), (10.0, 0.0), (0.0, 5.0))
    d = LevelTable("d", (0.0, 0.5), (100.0, 0.0), (10.0, 10.0))
    for _ in range(2):
        r = allocate([a, b, c, d], 18.5)  # a at cost 3 or 2: same error, both feasible
        assert r.choice == {"a": 0.5, "b": 0.0, "c": 0.0, "d": 0.5}
        assert r.cost == 17.0 and r.error == pytest.approx(10.5)
    r = allocate([LevelTable("x", (0.0, 0.5), (10.0, 5.0), (0.0, 0.0))], 10.0)
    assert r.choice == {"x": 0.5}


def _sparsity_tables(rng: np.random.Generator, L: int = 30, S: int = 20) -> list[LevelTable]:
    levels = tuple(np.linspace(0, 0.95, S))
    tables = []
    for i in range(L):
        params = float(rng.integers(1_000, 1_000_000))
        scale = float(rng.lognormal(0, 1))
        tables.append(LevelTable(f"layer{i}", levels, tuple(params * (1 - s) for s in levels),
                                 tuple(scale * s ** 2 / (1.05 - s) for s in levels)))
    return tables


def test_budget_met_on_30_layers_20_levels():
    tables = _sparsity_tables(np.random.default_rng(3))
    budget = target_budget(tables, 0.6, "sparsity")
    r = allocate(tables, budget)
    assert r.cost <= budget and r.cost >= 0.995 * budget
    assert sum(t.cost[t.levels.index(r.choice[t.name])] for t in tables) == pytest.approx(r.cost)
    # never worse than the uniform allocation (the first level at >= 60% everywhere)
    k = next(i for i, s in enumerate(tables[0].levels) if s >= 0.6)
    assert r.error <= sum(t.error[k] for t in tables)
    assert len(set(r.choice.values())) > 1  # genuinely non-uniform


@pytest.mark.parametrize("buckets", [10000, 13])
def test_monotone_in_budget(buckets):
    rng = np.random.default_rng(11)
    for _ in range(6):
        C, E = _random_case(rng, 6, 5)
        tables = _tables(C, E)
        lo, hi = C.min(axis=1).sum(), C.max(axis=1).sum()
        errs = [allocate(tables, b, buckets=buckets).error
                for b in np.linspace(lo * (1 + 1e-9), hi * 1.1, 30)]
        assert all(e2 <= e1 for e1, e2 in zip(errs, errs[1:]))


def test_target_budget_kinds():
    a = LevelTable("a", (0.0, 0.5), (100.0, 50.0), (0.0, 1.0))
    b = LevelTable("b", (0.0, 0.5), (300.0, 150.0), (0.0, 1.0))
    assert target_budget([a, b], 0.75, "sparsity") == pytest.approx(100.0)
    assert target_budget([a, b], 0.0, "sparsity") == 400.0
    for kind in ("flops", "params", "bops"):
        assert target_budget([a, b], 2.0, kind) == 200.0
        assert target_budget([a, b], 1.0, kind) == 400.0
    # relative to dense FP32 (32 * FLOPs), not to the most expensive quantized level
    q = LevelTable("q", (0.0, 0.1, 0.2), (32 * 10.0, 8 * 10.0, 4 * 10.0), (0.0, 0.1, 0.5))
    assert target_budget([q], 16.0, "bops") == 20.0
    with pytest.raises(ConfigError, match="kind"):
        target_budget([a], 2.0, "latency")
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        target_budget([a], 1.0, "sparsity")
    with pytest.raises(ConfigError, match="reduction factor"):
        target_budget([a], 0.5, "flops")
    with pytest.raises(ConfigError, match="'c'.*first level must be the dense"):
        target_budget([LevelTable("c", (0.5, 0.0), (50.0, 100.0), (1.0, 0.0))], 2.0, "flops")
    with pytest.raises(ConfigError, match="dense sparsity 0"):
        target_budget([LevelTable("c", (0.1, 0.5), (90.0, 50.0), (0.0, 1.0))], 0.5, "sparsity")


def test_normalized_errors():
    assert normalized_errors([0.0, 1.0, 4.0], 2.0) == (0.0, 0.5, 2.0)
    assert normalized_errors([0.0, 0.0], 0.0) == (0.0, 0.0)
    with pytest.raises(ConfigError, match="reference is 0"):
        normalized_errors([0.0, 1.0], 0.0)
    with pytest.raises(ConfigError, match="reference"):
        normalized_errors([0.0], -1.0)
    with pytest.raises(ConfigError, match="finite"):
        normalized_errors([float("nan")], 1.0)


def test_invalid_inputs():
    a = LevelTable("a", (0.0, 0.5), (10.0, 5.0), (0.0, 1.0))
    with pytest.raises(ConfigError, match="equally long"):
        LevelTable("x", (0.0, 0.5), (1.0,), (0.0, 1.0))
    with pytest.raises(ConfigError, match="costs"):
        LevelTable("x", (0.0,), (-1.0,), (0.0,))
    with pytest.raises(ConfigError, match="errors"):
        LevelTable("x", (0.0,), (1.0,), (float("nan"),))
    with pytest.raises(ConfigError, match="duplicate"):
        allocate([a, a], 15.0)
    with pytest.raises(ConfigError, match="buckets"):
        allocate([a], 8.0, buckets=0)
    with pytest.raises(ConfigError, match="budget"):
        allocate([a], -1.0)
    with pytest.raises(ConfigError, match="no layers"):
        allocate([], 1.0)


def test_profile_round_trip(tmp_path):
    tables = _sparsity_tables(np.random.default_rng(5), 5, 6)
    r = allocate(tables, target_budget(tables, 0.5, "sparsity"))
    path = tmp_path / "profile.json"
    save_profile(path, r, {"kind": "sparsity", "target": 0.5})
    assert {k: v.sparsity for k, v in load_profile(path).items()} == r.choice
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["kind"] == "sparsity" and doc["budget"] == r.budget
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]  # no tmp file left
    with pytest.raises(ConfigError, match="reserved"):
        save_profile(path, r, {"version": 2})


@pytest.mark.parametrize("change, match", [
    ({"version": 2}, "'version' must be 1"),
    ({"version": None}, "'version' must be 1"),
    ({"choice": [0.5]}, "'choice' must be"),
    ({"choice": {}}, "'choice' must be"),
    ({"choice": {"conv1": 1.0}}, r"choice\['conv1'\]: level 1.0 is not a sparsity in \[0, 1\)"),
    ({"choice": {"conv1": -0.1}}, r"choice\['conv1'\]"),
    ({"choice": {"conv1": "w9"}}, r"choice\['conv1'\]: level bits must be 2..8"),
    ({"choice": {"conv1": "half"}}, r"choice\['conv1'\]: level 'half' is not"),
    ({"choice": {"conv1": True}}, r"choice\['conv1'\]"),
    ({"cost": "12"}, "'cost' must be a finite number"),
    ({"error": None}, "'error' must be"),
    ({"budget": float("inf")}, "'budget' must be"),
])
def test_profile_validation(tmp_path, change, match):
    doc = {"version": 1, "choice": {"conv1": 0.5}, "cost": 1.0, "error": 0.1, "budget": 2.0}
    doc.update(change)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=match):
        load_profile(path)


def test_profile_not_json_or_not_object(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read JSON"):
        load_profile(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_profile(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(tmp_path / "missing.json")


def test_module_docstring_example():
    assert doctest.testmod(allocate_mod).failed == 0


def test_profile_with_mixed_level_labels(tmp_path):
    t = LevelTable("conv1", ("fp32", "w8", "2:4+w4"), (1024.0, 64.0, 16.0), (0.0, 0.1, 0.5))
    u = LevelTable("fc", ("fp32", "w8", "0.5+w8"), (2048.0, 128.0, 64.0), (0.0, 0.01, 0.02))
    r = allocate([t, u], 150.0)
    assert r.choice == {"conv1": "w8", "fc": "0.5+w8"} and r.cost == 128.0
    path = tmp_path / "p.json"
    save_profile(path, r)
    got = load_profile(path)
    assert got["conv1"] == Level(bits=8) and got["fc"] == Level(sparsity=0.5, bits=8)
