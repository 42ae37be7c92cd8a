"""The solver registry: which code solves a layer for a (structure type, method) pair.

Tables filled at import by decorators next to the code they register:

    @register_solver(kind, *methods)  whole-layer solver: fn(task: Task) -> LayerSolution
    @register_pipeline(method)        a staged method: fn(task, prune) -> LayerSolution runs
                                      the pruning stage registered for the structure's type,
                                      then its own quantization stage ("obc": ExactOBS, OBQ)
    @register_pruner(kind, method)    that pruning stage: fn(stage: Stage, structure,
                                      count) -> Pruned (count: weights to remove)
    @register_baseline(kind)          magnitude pruning at that structure: fn(W64 [G, r, d],
                                      structure, count) -> [G, r, d] (the report's baseline)
    @register_tracer(kind)            loss traces over every sparsity level (allocation):
                                      fn(stage, structure, max_count) -> traces.LossTraces

Lookups walk the structure type's MRO, so a solver registered for `object` serves every
kind (the baseline methods do). A new structure kind is one new type (with `removals(G, r,
d)` and `sparsity`) plus its registered baseline and pruner(s); unknown combinations raise
ConfigError naming `solver.method` / `structure`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ..errors import ConfigError

__all__ = ["register_solver", "register_pipeline", "register_pruner", "register_baseline",
           "register_tracer", "solver_for", "baseline_for", "tracer_for", "methods"]

_SOLVERS: dict[tuple[type, str], Callable[..., Any]] = {}
_PIPELINES: dict[str, Callable[..., Any]] = {}
_PRUNERS: dict[tuple[type, str], Callable[..., Any]] = {}
_BASELINES: dict[type, Callable[..., Any]] = {}
_TRACERS: dict[type, Callable[..., Any]] = {}


def register_solver(kind: type, *methods: str) -> Callable[[Any], Any]:
    def add(fn: Any) -> Any:
        for m in methods:
            _SOLVERS[(kind, m)] = fn
        return fn
    return add


def register_pipeline(method: str) -> Callable[[Any], Any]:
    def add(fn: Any) -> Any:
        _PIPELINES[method] = fn
        return fn
    return add


def register_pruner(kind: type, method: str) -> Callable[[Any], Any]:
    def add(fn: Any) -> Any:
        _PRUNERS[(kind, method)] = fn
        return fn
    return add


def register_baseline(kind: type) -> Callable[[Any], Any]:
    def add(fn: Any) -> Any:
        _BASELINES[kind] = fn
        return fn
    return add


def register_tracer(kind: type) -> Callable[[Any], Any]:
    def add(fn: Any) -> Any:
        _TRACERS[kind] = fn
        return fn
    return add


def methods() -> tuple[str, ...]:
    """Every registered method, sorted."""
    return tuple(sorted({m for _, m in _SOLVERS} | {m for _, m in _PRUNERS
                                                    if m in _PIPELINES}))


def solver_for(structure: Any, method: str) -> Callable[[Any], Any]:
    """The layer solver for `structure`'s type and `method`: fn(task) -> LayerSolution."""
    kind = type(structure)
    baseline_for(structure)  # every kind needs its baseline (reported with every method)
    for k in kind.__mro__:
        if (k, method) in _SOLVERS:
            return _SOLVERS[(k, method)]
        if method in _PIPELINES and (k, method) in _PRUNERS:
            return partial(_PIPELINES[method], prune=_PRUNERS[(k, method)])
    if method not in methods():
        raise ConfigError(f"solver.method must be one of {', '.join(methods())}, got "
                          f"{method!r}")
    kinds = sorted({k.__name__ for k, m in [*_SOLVERS, *_PRUNERS] if m == method})
    others = [m for m in methods() if _supports(kind, m)]
    raise ConfigError(f"solver.method {method!r} does not handle {kind.__name__} structures "
                      f"(it handles: {', '.join(kinds)}); the methods for {kind.__name__} "
                      f"are {', '.join(others)}")


def _supports(kind: type, method: str) -> bool:
    return any((k, method) in _SOLVERS or (method in _PIPELINES and (k, method) in _PRUNERS)
               for k in kind.__mro__)


def baseline_for(structure: Any) -> Callable[..., Any]:
    return _lookup(_BASELINES, structure, "baseline", "register_baseline")


def tracer_for(structure: Any) -> Callable[..., Any]:
    return _lookup(_TRACERS, structure, "tracer (loss traces over sparsity levels)",
                   "register_tracer")


def _lookup(table: dict[type, Any], structure: Any, what: str, how: str) -> Any:
    for k in type(structure).__mro__:
        if k in table:
            return table[k]
    name = type(structure).__name__
    known = ", ".join(sorted(k.__name__ for k in table))
    raise ConfigError(f"structure: no {what} is registered for {name} (registered for: "
                      f"{known}; a new kind registers one with @{how}({name}))")
