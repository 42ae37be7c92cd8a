"""The paired statistics of bench/real_paired.py (exact McNemar, paired bootstrap)."""

import importlib.util
import math
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "real_paired", Path(__file__).resolve().parent.parent / "bench" / "real_paired.py")
paired = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired)


def test_mcnemar_matches_the_binomial_tail():
    assert paired.mcnemar_p(0, 0) == 1.0
    assert math.isclose(paired.mcnemar_p(0, 6), 2 / 64)  # all 6 discordant one way
    assert math.isclose(paired.mcnemar_p(3, 3), 1.0)
    # b=2, c=8: 2 * P(X <= 2 | n=10) = 2 * (1 + 10 + 45) / 1024
    assert math.isclose(paired.mcnemar_p(2, 8), 2 * 56 / 1024)
    assert paired.mcnemar_p(2, 8) == paired.mcnemar_p(8, 2)


def test_bootstrap_ci_covers_the_difference_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    a = rng.random(4000) < 0.75
    b = a.copy()
    flip = rng.random(4000) < 0.05  # b differs from a on 5% of the lines, both ways
    b[flip] = ~b[flip]
    lo, hi = paired.bootstrap_ci(a, b)
    d = a.mean() - b.mean()
    assert lo < d < hi
    lo2, hi2 = paired.bootstrap_ci(a[:400], b[:400])
    assert hi2 - lo2 > 2 * (hi - lo)
    assert paired.bootstrap_ci(a, a) == (0.0, 0.0)
