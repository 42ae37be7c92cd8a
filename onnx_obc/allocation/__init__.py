"""Non-uniform allocation: one level per layer under a global budget, as one stage.

    chosen = choose_levels(proto, layers, hessians, backend, prune=..., quant=..., solver=...,
                           alloc=..., data=fit, batch=32, budget_bytes=..., runtime=runtime)

    levels.py    Level (a sparsity, N:M, weight bits, or both), labels, bit-operation costs
    tables.py    per-layer level tables (loss traces or the mixed levels; their costs)
    score.py     the "output" score: measured model output error, dense outputs run once
    dp.py        the exact multiple-choice knapsack DP, and the budget of a target
    profiles.py  saved profiles (JSON), read back as levels
    choose.py    the stage: profile or DP, the target, the report's profile
"""

from .choose import (Allocated, ProfileMismatch, Target, UnreachableTarget, choose_levels,
                     from_profile, from_tables, resolve_target)
from .dp import KINDS, Allocation, LevelTable, allocate, normalized_errors, target_budget
from .levels import Level, mixed_levels
from .profiles import load_profile, save_profile
from .score import OutputScore
from .tables import (TableSpecs, build_tables, dense_cost, layer_table, level_grid,
                     positions_per_sample)

__all__ = ["Allocated", "ProfileMismatch", "Target", "UnreachableTarget", "choose_levels",
           "from_profile", "from_tables", "resolve_target", "KINDS", "Allocation",
           "LevelTable", "allocate", "normalized_errors", "target_budget", "Level",
           "mixed_levels", "load_profile", "save_profile", "OutputScore", "TableSpecs",
           "build_tables", "dense_cost", "layer_table", "level_grid", "positions_per_sample"]
