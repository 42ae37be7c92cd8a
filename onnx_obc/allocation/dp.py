"""Non-uniform per-layer compression levels under one global budget (OBC §2.9 DP, fixed).

Each layer offers levels (e.g. sparsities) with a cost (params, FLOPs, bit-ops...) and an
additive error estimate; `allocate` picks one level per layer minimising the total error with
total cost <= budget (exact multiple-choice knapsack by dynamic programming over cost buckets).

>>> a = LevelTable("conv1", levels=(0.0, 0.5, 0.9), cost=(100, 50, 10), error=(0, 1.0, 5.0))
>>> b = LevelTable("fc", levels=(0.0, 0.5, 0.9), cost=(300, 150, 30), error=(0, 0.2, 3.0))
>>> target_budget([a, b], 0.5, "sparsity")    # keep half of the 400 dense params
200.0
>>> alloc = allocate([a, b], 200.0)
>>> alloc.choice, alloc.cost, alloc.error
({'conv1': 0.5, 'fc': 0.5}, 200.0, 1.2)

(conv1 dense + fc at 0.9 costs 130 but errs 3.0; conv1 0.5 + fc 0.5 uses the whole budget.)

Exact case. When every cost is an integer (parameters, FLOPs, bit-operations) and the slack
`budget - min_total` spans at most ~50M / layers multiples of the gcd of the cost increments,
the DP runs on that lattice: no rounding, the optimum is exact, and a choice that meets the
budget exactly (e.g. every layer at W4A8 for a 32x BOP target) is always reachable.

Rounding guarantee (otherwise). Costs above the per-layer minimum are discretised on a grid of step
`q = (budget - min_total) / buckets`, where `min_total` is the sum of each layer's cheapest
cost, and rounded UP (exact rational arithmetic). Hence (1) the returned choice always has
exact total cost <= budget, (2) its error is <= that of every choice with exact cost
<= budget - len(tables) * q (so also <= budget - len(tables) * budget / buckets), and
(3) the error never increases when the budget grows. Levels that cost 0 buckets are used
(the reference skips them), and the cheapest combination is always reachable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import ConfigError

KINDS = ("sparsity", "flops", "params", "bops")
LevelValue = float | str  # a sparsity, or a level label (levels.py) such as "2:4+w4"


@dataclass(frozen=True)
class LevelTable:
    """One layer's options: `levels[i]` costs `cost[i]` and adds `error[i]` to the total."""

    name: str
    levels: tuple[LevelValue, ...]
    cost: tuple[float, ...]
    error: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(v if isinstance(v, str) else float(v)
                                                 for v in self.levels))
        for field in ("cost", "error"):
            object.__setattr__(self, field, tuple(float(v) for v in getattr(self, field)))
        n = len(self.levels)
        if not self.name or n == 0 or len(self.cost) != n or len(self.error) != n:
            raise ConfigError(f"level table {self.name!r}: needs a name and equally long, "
                              f"non-empty levels/cost/error (got {n}, {len(self.cost)}, "
                              f"{len(self.error)})")
        if not all(math.isfinite(c) and c >= 0 for c in self.cost):
            raise ConfigError(f"level table {self.name!r}: costs must be finite and >= 0, "
                              f"got {self.cost}")
        if not all(math.isfinite(e) for e in self.error):
            raise ConfigError(f"level table {self.name!r}: errors must be finite, "
                              f"got {self.error}")


@dataclass(frozen=True)
class Allocation:
    choice: dict[str, LevelValue]  # layer name -> chosen level
    cost: float  # exact total cost of the choice (<= budget)
    error: float  # total error of the choice
    budget: float


def allocate(tables: Sequence[LevelTable], budget: float, *, buckets: int = 10000
             ) -> Allocation:
    """Minimise sum of errors s.t. sum of costs <= budget, one level per layer.

    O(layers * levels * buckets) time (vectorised over buckets), layers * (buckets + 1) small
    ints for backtracking. Ties go to the lower (discretised) total cost, then within a layer
    to the cheaper level, then to the first listed. See the module docstring for the rounding
    guarantee. Raises ConfigError when even the cheapest levels exceed the budget.
    """
    if not tables:
        raise ConfigError("allocate: no layers given")
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"allocate: duplicate layer names {dup}")
    if not isinstance(buckets, int) or buckets < 1:
        raise ConfigError(f"buckets must be an integer >= 1, got {buckets!r}")
    budget = float(budget)
    if not math.isfinite(budget) or budget < 0:
        raise ConfigError(f"budget must be finite and >= 0, got {budget}")
    mins = [min(t.cost) for t in tables]
    min_total = sum((Fraction(m) for m in mins), Fraction(0))
    fbudget = Fraction(budget)
    if min_total > fbudget:
        raise ConfigError(f"infeasible budget: the minimum achievable cost (every layer at its "
                          f"cheapest level) is {float(min_total):.6g}, but the budget asked "
                          f"is {budget:.6g}; raise the budget or add cheaper levels")
    if sum((Fraction(max(t.cost)) for t in tables), Fraction(0)) <= fbudget:  # all fits
        picks = [min(range(len(t.levels)), key=lambda i, t=t: (t.error[i], t.cost[i], i))
                 for t in tables]
    else:
        slack = fbudget - min_total
        exact = _exact_units(tables, mins, slack)
        if exact is not None:  # integer costs on a coarse enough lattice: no rounding at all
            picks = _dp(tables, *exact)
        else:
            units = [[_units(c, m, slack, buckets) for c in t.cost]
                     for t, m in zip(tables, mins)]
            picks = _dp(tables, units, buckets)
    total = sum((Fraction(t.cost[s]) for t, s in zip(tables, picks)), Fraction(0))
    if total > fbudget:  # provably impossible with ceil rounding; guard against regressions
        raise RuntimeError(f"internal error: allocation cost {float(total)} > budget {budget}")
    return Allocation(choice={t.name: t.levels[s] for t, s in zip(tables, picks)},
                      cost=float(total),
                      error=math.fsum(t.error[s] for t, s in zip(tables, picks)), budget=budget)


EXACT_CELLS = 50_000_000  # layers x (buckets + 1) of the exact DP's backtracking table


def _exact_units(tables: Sequence[LevelTable], mins: list[float], slack: Fraction
                 ) -> tuple[list[list[int]], int] | None:
    """Exact integer units when every cost is an integer: unit g = gcd of all increments over
    the layer minima, buckets = floor(slack / g); None when that table would be too large."""
    if not all(float(c).is_integer() for t in tables for c in t.cost):
        return None
    incs = [int(c) - int(m) for t, m in zip(tables, mins) for c in t.cost]
    g = 0
    for x in incs:
        g = math.gcd(g, x)
    if g == 0:
        return None
    nb = int(slack // g)
    if nb < 1 or len(tables) * (nb + 1) > EXACT_CELLS:
        return None
    return [[min((int(c) - int(m)) // g, nb + 1) for c in t.cost]
            for t, m in zip(tables, mins)], nb


def _units(cost: float, low: float, slack: Fraction, buckets: int) -> int:
    """Buckets for `cost - low` (exactly), rounded up; buckets + 1 means unusable."""
    if cost == low:
        return 0
    if slack == 0:
        return buckets + 1
    x = (cost - low) * buckets / float(slack)  # fast path, relative error ~1e-15
    if abs(x - round(x)) > 1e-9 * max(1.0, x):
        return min(math.ceil(x), buckets + 1)
    exact = (Fraction(cost) - Fraction(low)) * buckets / slack  # near an integer: be exact
    return min(math.ceil(exact), buckets + 1)


def _dp(tables: Sequence[LevelTable], units: list[list[int]], buckets: int) -> list[int]:
    nb = buckets + 1
    most = max(len(t.levels) for t in tables)
    dtype = np.int8 if most <= 127 else np.int16 if most <= 32767 else np.int32
    back = np.zeros((len(tables), nb), dtype=dtype)  # argmin level per (layer, bucket)
    dp = np.full(nb, np.inf)
    dp[0] = 0.0  # dp[c]: least error of the layers so far with exactly c buckets used
    for li, t in enumerate(tables):
        new = np.full(nb, np.inf)
        arg = back[li]
        for s in sorted(range(len(t.levels)), key=lambda i: (units[li][i], t.cost[i], i)):
            u = units[li][s]
            if u > buckets:
                continue
            cand = dp[: nb - u] + t.error[s]
            better = cand < new[u:]  # strict: earlier (cheaper) levels win ties
            np.copyto(new[u:], cand, where=better)
            np.copyto(arg[u:], s, where=better, casting="unsafe")
        dp = new
    if not np.isfinite(dp).any():  # unreachable: the all-cheapest choice uses 0 buckets
        raise RuntimeError("internal error: no feasible allocation in the DP")
    c = int(np.argmin(dp))  # first minimum = lowest total buckets
    picks = [0] * len(tables)
    for li in range(len(tables) - 1, -1, -1):
        picks[li] = int(back[li, c])
        c -= units[li][picks[li]]
    return picks


def target_budget(tables: Sequence[LevelTable], target: float, kind: str) -> float:
    """Budget for a user target, relative to the dense FP32 model (dense = 1x).

    Each table's FIRST level must be the dense (uncompressed FP32) one, and its cost the
    table's largest; dense total = sum of the level-0 costs. (The OBC reference measures
    reductions against "every layer at its most expensive level", e.g. 8w8a in its mixed
    database; we do not.)
    - "sparsity": target = global fraction of weights removed, costs = remaining params;
      budget = (1 - target) * dense params.
    - "flops" / "params" / "bops": target = reduction factor (2.0 = half the dense cost);
      budget = dense cost / target. For "bops" the dense cost is FP32 bit-ops (FLOPs * 32).
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not tables:
        raise ConfigError("target_budget: no layers given")
    for t in tables:
        if t.cost[0] < max(t.cost):
            raise ConfigError(f"level table {t.name!r}: the first level must be the dense one "
                              f"(the most expensive), but cost {t.cost[0]:g} < {max(t.cost):g}")
        if kind == "sparsity" and t.levels[0] != 0.0:
            raise ConfigError(f"level table {t.name!r}: the first level must be the dense "
                              f"sparsity 0, got {t.levels[0]:g}")
    dense = math.fsum(t.cost[0] for t in tables)
    target = float(target)
    if kind == "sparsity":
        if not 0.0 <= target < 1.0:
            raise ConfigError(f"sparsity target must be a fraction in [0, 1), got {target}")
        return (1.0 - target) * dense
    if not math.isfinite(target) or target < 1.0:
        raise ConfigError(f"{kind} target is a reduction factor >= 1 relative to the dense FP32 "
                          f"model (2.0 = half), got {target}")
    return dense / target


def normalized_errors(losses: Sequence[float], reference: float) -> tuple[float, ...]:
    """loss / reference per level (e.g. reference = the layer's ||W X||^2), so layers compare.

    A zero reference is accepted only when every loss is 0 too (a dead layer): zeros.
    """
    vals = tuple(float(x) for x in losses)
    reference = float(reference)
    if not all(math.isfinite(x) for x in vals):
        raise ConfigError(f"losses must be finite, got {vals}")
    if not math.isfinite(reference) or reference < 0:
        raise ConfigError(f"reference must be finite and >= 0, got {reference}")
    if reference == 0.0:
        if any(vals):
            raise ConfigError(f"reference is 0 but losses are not {vals}: cannot normalise")
        return tuple(0.0 for _ in vals)
    return tuple(x / reference for x in vals)
