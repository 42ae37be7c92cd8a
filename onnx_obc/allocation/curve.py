"""The allocation's error-versus-budget curve: the DP's least total error at every budget
from the cheapest choice to the dense model, from one extra pass of the same DP.

    points = error_curve(tables, chosen)   # [(cost, error), ...], cost increasing

One DP over the whole range (slack = dense - min_total, `buckets` cost buckets, costs
rounded UP as in dp.py) gives, per bucket c, the least error of the choices whose exact cost
is <= min_total + c * q; the running minimum over c is the curve. Every point is the error
of a real choice that fits its budget (an upper bound of the optimum, exact up to the
rounding of dp.py's guarantee). The chosen allocation is one more such point; it is merged
in, so the curve passes through it and stays non-increasing in the budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from .dp import Allocation, LevelTable, _units

POINTS = 60  # points kept for the report (the DP itself runs on `buckets`)


def least_errors(tables: Sequence[LevelTable], buckets: int = 2000
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(budget [buckets + 1], least total error [buckets + 1]): the budget grid from the
    cheapest total cost to the dense total, and the least error of a choice within each."""
    mins = [min(t.cost) for t in tables]
    low = math.fsum(mins)
    high = math.fsum(max(t.cost) for t in tables)
    slack = Fraction(high) - sum((Fraction(m) for m in mins), Fraction(0))
    nb = buckets + 1
    dp = np.full(nb, np.inf)
    dp[0] = 0.0  # dp[c]: least error of the layers so far with exactly c buckets used
    for t, m in zip(tables, mins):
        new = np.full(nb, np.inf)
        for c, e in zip(t.cost, t.error):
            u = _units(c, m, slack, buckets) if slack > 0 else 0
            if u > buckets:
                continue
            np.minimum(new[u:], dp[: nb - u] + e, out=new[u:])
        dp = new
    budgets = low + (high - low) * np.arange(nb) / buckets
    errors = np.minimum.accumulate(dp)
    errors[-1] = min(errors[-1], math.fsum(min(t.error) for t in tables))  # all fits
    return budgets, errors


def error_curve(tables: Sequence[LevelTable], chosen: Allocation, *, buckets: int = 2000,
                points: int = POINTS) -> list[tuple[float, float]]:
    """About `points` (budget, least error) pairs, budget increasing, the chosen
    allocation's (budget, error) among them; error non-increasing."""
    budgets, errors = least_errors(tables, buckets)
    keep = np.unique(np.linspace(0, len(budgets) - 1, points).round().astype(int))
    pts = {float(budgets[i]): float(errors[i]) for i in keep}
    pts[float(chosen.budget)] = min(pts.get(float(chosen.budget), math.inf), chosen.error)
    out, best = [], math.inf
    for b in sorted(pts):
        e = pts[b]
        if b >= chosen.budget:  # the chosen choice fits every larger budget
            e = min(e, chosen.error)
        best = min(best, e)
        out.append((b, best))
    return out
