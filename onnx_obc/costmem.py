"""The memory side of the cost plan (costplan.py): Hessian blocks, what the layers' Hessians
and the solver need with one group's Hessians held at a time (every layer one-shot; a
sequential group, layer_groups), the refusal when even blocks cannot fit, and the
fallbacks of the defaults that need every full Hessian (without_auto)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .costmodel import Shape, hessian_bytes, row_bytes, solver_fixed_bytes
from .layers import Layer
from .specs import MB

MIN_BLOCK = 64  # the smallest Hessian block (columns) the planner uses
MIN_ACTIVATIONS = 8 * MB  # the least a capture pass is given


def without_auto(layers: list[Layer], cfg: Any) -> tuple[Any, list[str]]:
    """(cfg, []), or where a default that needs every full Hessian cannot hold the layers'
    within the memory budget, cfg without it and the notes saying so: alloc.mode "auto"
    resolved to the DP (uniform sparsity instead, which blocked OBS can solve), then
    run.sequential None resolved to sequential (one-shot instead: blockable too)."""
    notes, M = [], cfg.run.memory_budget_mb * MB
    if getattr(cfg, "_alloc_auto", None) is not None and cfg.alloc.mode == "dp":
        need = needed(layers, cfg)
        if need > M:
            cfg = cfg.replace(allocate="uniform")
            notes.append(f"uniform sparsity instead of the default DP allocation: the DP needs "
                         f"every layer's full Hessian ({need / MB:.0f} MB), over "
                         f"--memory-budget {M // MB} MB; raise the budget to allocate by the DP")
    if getattr(cfg, "_run_auto", None) is not None and cfg.run.sequential:
        need = needed(layers, cfg)
        if need > M:
            cfg = cfg.replace(sequential=False)
            notes.append(f"one-shot instead of the default sequential calibration: its "
                         f"unblocked Hessians and cross moments need {need / MB:.0f} MB, over "
                         f"--memory-budget {M // MB} MB; raise the budget for --sequential")
    return cfg, notes


def needed(layers: list[Layer], cfg: Any) -> int:
    shapes = {L.weight: Shape(*L.matrix_shape) for L in layers}
    return memory(shapes, cfg.run.memory_budget_mb * MB, 2 if cfg.run.sequential else 1,
                   held_groups(layers, cfg))[0]


def layer_groups(layers: list[Layer], run: Any) -> list[list[Layer]]:
    """All layers at once, or `run.sequential_groups` topological groups (None: one per
    layer) with run.sequential."""
    if not run.sequential:
        return [layers]
    k = run.sequential_groups or len(layers)
    size = -(-len(layers) // k)
    return [layers[i:i + size] for i in range(0, len(layers), size)]


def held_groups(layers: list[Layer], cfg: Any) -> list[list[str]]:
    """The weights whose Hessians are held together: a sequential group's (all of them
    when an allocation captures every layer first)."""
    run = dataclasses.replace(cfg.run, sequential=False) if cfg.alloc.active else cfg.run
    return [[L.weight for L in g] for g in layer_groups(layers, run)]


def blocked(s: Shape, cap: int, align: int) -> Shape:
    """`s` with its columns in blocks of at most `cap` (the largest divisor of d that is a
    multiple of the quantization group size; unblocked when d <= cap)."""
    if s.d <= cap:
        return Shape(s.G, s.r, s.d, 1)
    for bs in range(cap, 0, -1):
        if s.d % bs == 0 and (bs % align == 0 or align % bs == 0):
            return Shape(s.G, s.r, s.d, s.d // bs)
    return Shape(s.G, s.r, s.d, s.d)


def memory(shapes: dict[str, Shape], M: int, per_hess: int, groups: list[list[str]]
            ) -> tuple[int, int]:
    """(bytes needed with one-row batches, bytes left for the row batches); the Hessians
    of one of `groups` are held at a time."""
    kept = held(shapes, per_hess, groups)
    fixed = max((solver_fixed_bytes(s) for s in shapes.values()), default=0)
    one = max((row_bytes(s) for s in shapes.values()), default=0)
    return kept + max(MIN_ACTIVATIONS, fixed + one), max(M - kept - fixed, one)


def held(shapes: dict[str, Shape], per_hess: int, groups: list[list[str]]) -> int:
    return max((sum(hessian_bytes(shapes[w]) * per_hess for w in g) for g in groups), default=0)


def refusal(layers: list[Layer], shapes: dict[str, Shape], need: int, M: int,
             blockable: bool, cfg: Any) -> str:
    big = sorted(layers, key=lambda L: -hessian_bytes(shapes[L.weight]))[:3]
    names = ", ".join(f"{L.name} ({shapes[L.weight].G * shapes[L.weight].r}x"
                      f"{shapes[L.weight].d}: {hessian_bytes(shapes[L.weight]) / MB:.0f} MB)"
                      for L in big)
    why = ("" if blockable else " Solving in column blocks, which would fit, needs unstructured"
           " sparsity or quantization only, without run.sequential or an allocation; ")
    how = f"in blocks of {MIN_BLOCK} columns" if blockable else "unblocked"
    return (f"the layers' Hessians and solver need {need / MB:.0f} MB, more than "
            f"run.memory_budget_mb {M // MB} MB, even {how} "
            f"(largest: {names}).{why} raise run.memory_budget_mb to at least "
            f"{math.ceil(need / MB)}, or exclude the widest layers with --exclude")
