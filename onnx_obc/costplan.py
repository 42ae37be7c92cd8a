"""The plan, made before capture: per layer the Hessian bytes, the solver's bytes and the
predicted seconds of ExactOBS and of the fast path (costmodel.py); which layers are solved
in column blocks (block-diagonal H, solvers/blocked.py) so everything fits
`run.memory_budget_mb`; and with `run.time_budget_s`, which layers get exact solves.

Memory (costmem.py): the Hessians of every layer (sequential: of a group) are held from
capture to their solve, so the budget must cover them all plus the larger of (captured
activations, one solve's working set). When that does not fit, layers wider than a block
cap are solved in blocks of at most that many columns, the cap halving until it fits; if
even blocks of MIN_BLOCK columns do not fit, the run stops before any work with the
figures. What is left of the budget goes to the
activations of a capture pass and to the solver's row batches.

Time (method obc, unstructured or quantization only): costfit.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .costclock import CONTENDED, contention_note
from .costmem import (MIN_ACTIVATIONS, MIN_BLOCK, blocked, held, held_groups, memory,
                      refusal, without_auto)  # noqa: F401  (without_auto: for the pipeline)
from .costmodel import (Rates, Shape, baseline_seconds, calibrate, exact_seconds, fast_seconds,
                        fast_quant_seconds, hessian_bytes, row_bytes, solver_bytes,
                        trace_seconds)
from .errors import ConfigError
from .layers import Layer
from .specs import MB

SMALL_WORK = 2e9  # exact work (sum of G r d^3 over the layers) at most this: rates unmeasured
# (their micro-benchmark, ~2.9 s on a 2-core machine, was 80% of the shipped digits_cnn's
# 3.6 s --sparsity 0.5 run, whose solves and allocation took 0.4 s; work 1.5e9)
OBQ_CANDIDATES = 4  # GPTQ solves beside OBQ in the obc quantization stage (solvers/choose.py)
FAST_CANDIDATES = 1  # GPTQ solves where OBQ does not pay (choose.fast_quantized)


@dataclass(frozen=True)
class LayerPlan:
    name: str
    weight: str
    G: int
    r: int
    d: int
    blocks: int  # column blocks of the Hessian (1: the full d x d)
    method: str  # what solves it: obc, gptq, magnitude or rtn
    hessian_bytes: int
    solver_bytes: int
    exact_seconds: float | None  # predicted, at `blocks` (None: no exact solver applies)
    fast_seconds: float | None  # predicted (None: no fast path for the structure)
    seconds: float | None  # predicted for `method` (None: not predicted, make_plan)

    @property
    def label(self) -> str:
        return self.method + (f"-blocked({self.blocks} blocks)" if self.blocks > 1 else "")


@dataclass(frozen=True)
class Plan:
    layers: list[LayerPlan]
    budget_bytes: int
    activation_bytes: int  # for the activations of one capture pass
    row_bytes: int  # for the solver's row batches
    time_budget_s: float | None = None
    rates: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    allocate_seconds: float | None = None  # predicted for the DP's stage (allocation_seconds)
    untimed: str = ""  # why no time is predicted ("" where it is)

    def blocks(self) -> dict[str, int]:
        """weight -> column blocks of its Hessian."""
        return {p.weight: p.blocks for p in self.layers}

    def get(self, weight: str) -> LayerPlan | None:
        return next((p for p in self.layers if p.weight == weight), None)

    @property
    def seconds(self) -> float | None:
        """The predicted solve seconds (None: not predicted, `untimed` says why)."""
        if any(p.seconds is None for p in self.layers):
            return None
        return sum(p.seconds for p in self.layers)

    @property
    def hessian_total(self) -> int:
        return sum(p.hessian_bytes for p in self.layers)

    def summary(self) -> str:
        blocked = sum(p.blocks > 1 for p in self.layers)
        exact = sum(p.method == "obc" and p.exact_seconds is not None for p in self.layers)
        t = self.seconds
        return (f"plan: {len(self.layers)} layers, solve "
                + ("not predicted" if t is None else f"predicted {t:.1f} s")
                + f" ({exact} exact, {len(self.layers) - exact} other"
                + (f", {blocked} in column blocks" if blocked else "") + "); Hessians "
                f"{self.hessian_total / MB:.0f} MB, largest solve "
                f"{max((p.solver_bytes for p in self.layers), default=0) / MB:.0f} MB, of "
                f"--memory-budget {self.budget_bytes / MB:.0f} MB"
                + (f"; --time-budget {self.time_budget_s:g} s" if self.time_budget_s else "")
                + ("" if self.allocate_seconds is None else
                   f"; allocation predicted {self.allocate_seconds:.1f} s")
                + ("; rates contended, one-thread times used" if self.rates.get(
                    "contention", 1.0) > CONTENDED else ""))

    def table(self) -> str:
        from .names import shortener

        w = max([12] + [min(40, len(p.name)) for p in self.layers])
        short_name = shortener([p.name for p in self.layers], w)
        head = (f"{'layer':<{w}} {'W [out,in]':>12} {'hessian':>9} {'solver':>9} "
                f"{'exact s':>9} {'fast s':>9} method")
        mb = lambda b: f"{b / MB:.1f}M"  # noqa: E731
        sec = lambda s: "-" if s is None else f"{s:.3g}"  # noqa: E731
        lines = [head, "-" * len(head)] + [
            f"{short_name(p.name):<{w}} {f'{p.G * p.r}x{p.d}':>12} "
            f"{mb(p.hessian_bytes):>9} {mb(p.solver_bytes):>9} {sec(p.exact_seconds):>9} "
            f"{sec(p.fast_seconds):>9} {p.label}" for p in self.layers]
        return "\n".join([*lines, self.summary()])

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [{**asdict(p), "label": p.label} for p in self.layers],
                "budget_bytes": self.budget_bytes, "activation_bytes": self.activation_bytes,
                "row_bytes": self.row_bytes, "time_budget_s": self.time_budget_s,
                "predicted_seconds": self.seconds, "hessian_bytes": self.hessian_total,
                "rates": dict(self.rates), "allocate_seconds": self.allocate_seconds,
                "untimed": self.untimed}


def _refined(q: Any, candidates: int) -> int:
    """Candidates the obc solve refines (choose.py: OBQ, the GPTQs, RTN; after pruning OBQ)."""
    from .solvers.choose import exact_pays
    from .solvers.refine import wanted
    return 0 if not q.bits or not wanted(q, exact=True) or not exact_pays(q.bits) else (
        candidates + 2 if candidates else 1)


def planned(layers: list[Layer], cfg: Any, backend: Any, progress: bool,
            rates: dict[str, float] | None = None) -> Plan:
    """The run's plan on `backend` (row batches at most solve.solver_budget), or on the
    host when every layer is solved there (Backend.for_width); shown as a table on stderr
    with progress, its summary logged otherwise. `rates`: an earlier plan's (Plan.rates),
    not measured again."""
    import logging
    import sys

    from tqdm.auto import tqdm

    from .solve import solver_budget

    on = [backend.for_width(L.matrix_shape[2]) for L in layers]
    if on and all(b is not backend for b in on):  # every layer solved on the host (narrow)
        backend = on[0]
    rt = Rates(**rates) if rates else None
    plan = make_plan(layers, cfg, backend.xp, backend.sync, solver_budget(cfg.run, backend), rt)
    if progress:
        tqdm.write(plan.table(), file=sys.stderr)
    else:
        logging.getLogger(__name__).info(plan.summary())
    return plan


def make_plan(layers: list[Layer], cfg: Any, xp: Any = None, sync: Any = lambda: None,
              row_cap: int | None = None, rates: Rates | None = None) -> Plan:
    """The plan for `layers` under cfg.run's budgets (see the module docstring). `row_cap`:
    an upper bound on the solver's row-batch bytes (--solver-memory, or the GPU's memory);
    `rates`: measured rates (default: costmodel.calibrate on `xp`). Runs that quantize
    alone at 8 bits (not exact_applies), or whose exact work is at most SMALL_WORK, without
    `run.time_budget_s` and `rates` measure none and predict no time (every seconds field
    None, Plan.untimed says why): nothing in them reads it but the printed plan, and the
    micro-benchmarks were a tenth of such an 8-bit run (docs/conversion-time.md),
    most of a small one."""
    import numpy as np

    run, q, prune = cfg.run, cfg.quant, cfg.prune
    M = run.memory_budget_mb * MB
    method = cfg.solver.method
    st_free = not (prune.nm or prune.block)
    blockable = st_free and not run.sequential and not cfg.alloc.active
    align = q.group_size or 1
    shapes = {L.weight: Shape(*L.matrix_shape) for L in layers}
    per_hess = 2 if run.sequential else 1  # sequential keeps the cross moments too
    groups = held_groups(layers, cfg)
    cap = max((s.d for s in shapes.values()), default=0)
    while True:
        plan_shapes = {w: blocked(s, cap, align) for w, s in shapes.items()}
        need, row = memory(plan_shapes, M, per_hess, groups)
        if need <= M:
            break
        smaller = cap // 2
        if not blockable or smaller < max(MIN_BLOCK, align):
            raise ConfigError(refusal(layers, plan_shapes, need, M, blockable, cfg))
        cap = smaller
    if row_cap is not None:
        row = min(row, row_cap)
    exact = exact_applies(cfg)
    work = sum(s.G * s.r * float(s.d) ** 3 for s in plan_shapes.values())
    timed = rates is not None or (exact and work > SMALL_WORK) or run.time_budget_s is not None
    untimed = "" if timed else "8 bits alone" if not exact else "a small run"
    rt = (rates or calibrate(xp or np, sync, exact=exact)) if timed else None
    sparsity = 0.0 if not st_free else (prune.sparsity or 0.0)
    quant = bool(q.bits)
    plans = []
    for L in layers:
        s = plan_shapes[L.weight]
        if rt is None:  # 8 bits alone, no --time-budget: no time is predicted (unmeasured)
            plans.append(LayerPlan(L.name, L.weight, s.G, s.r, s.d, s.k, method,
                                   hessian_bytes(s) * per_hess, solver_bytes(s, row), None,
                                   None, None))
            continue
        cands = OBQ_CANDIDATES if quant and not sparsity and s.k == 1 else 0
        ex = exact_seconds(s, rt, sparsity=prune.sparsity or (
            prune.nm[0] / prune.nm[1] if prune.nm else 0.0),
                           quant=quant, row_budget=row, candidates=cands,
                           refined=_refined(q, cands)) if exact else None
        fa = fast_seconds(s, rt, sparsity=sparsity or (prune.nm[0] / prune.nm[1] if prune.nm
                                                       else 0.0), quant=quant) if (
            not prune.block) else None  # the fast path: unstructured or N:M
        if not exact and method == "obc":  # choose.fast_quantized: GPTQ act-order
            secs = fast_quant_seconds(s, rt, candidates=FAST_CANDIDATES)
        elif method in ("magnitude", "rtn"):
            secs = baseline_seconds(s, rt, quant=quant)
        else:
            secs = ex if method == "obc" else fa
        plans.append(LayerPlan(L.name, L.weight, s.G, s.r, s.d, s.k, method,
                               hessian_bytes(s) * per_hess, solver_bytes(s, row), ex, fa, secs))
    note = contention_note(rt)  # the micro-benchmark's BLAS threads were contended
    out = Plan(plans, M, max(MIN_ACTIVATIONS, M - held(plan_shapes, per_hess, groups)), row,
               run.time_budget_s, {} if rt is None else rt.to_dict(), [note] if note else [],
               allocation_seconds(plan_shapes, cfg, rt, row), untimed)
    if run.time_budget_s is not None and method == "obc" and st_free and exact:
        from .costfit import fit_time
        out = fit_time(out, rt, sparsity, quant, row, align)
    return out


def plan_line(p: dict[str, Any], layers: list[tuple[float | None, float]],
              allocate: float | None) -> str:
    """The report's line, predicted against measured: `p` Plan.to_dict(), `layers` each
    solved layer's (predicted, measured) seconds (with its shrink search), `allocate` the
    measured allocation stage."""
    t, each, a = p["predicted_seconds"], [x for x, _ in layers], p.get("allocate_seconds")
    t = sum(each) if t is not None and all(each) else t
    solved = sum(m for _, m in layers)
    return ("plan: solve " + (f"not predicted ({p.get('untimed') or '8 bits alone'})"
                              if t is None else
                              f"predicted {t:.1f}s") + f", measured {solved:.1f}s"
            + ("" if a is None else f"; allocation predicted {a:.1f}s, measured "
               f"{allocate or 0.0:.1f}s") + f"; Hessians {p['hessian_bytes'] / MB:.0f} MB of "
            f"the {p['budget_bytes'] / MB:.0f} MB memory budget")


def over_time(cfg: Any, plan: Plan) -> str | None:
    """Where --time-budget cannot hold the default DP (`--allocate auto`): its predicted
    level tables and check with the fitted solves over the budget, which bounds the solves
    only. The note for taking uniform sparsity instead (its solves fitted), else None."""
    t, a = cfg.run.time_budget_s, plan.allocate_seconds
    if (t is None or a is None or getattr(cfg, "_alloc_auto", None) is None
            or cfg.alloc.mode != "dp" or a + (plan.seconds or 0.0) <= t):
        return None
    return (f"uniform sparsity instead of the default DP allocation: its level tables and check "
            f"(predicted {a:.1f} s) with the solves ({plan.seconds or 0.0:.1f} s) are over "
            f"--time-budget {t:g} s; --allocate dp keeps the DP")


def allocation_seconds(shapes: dict[str, Shape], cfg: Any, rt: Rates | None, row: int
                       ) -> float | None:
    """The DP's stage over weight or FLOP budgets with the layer-loss score (allocation/):
    per layer one ExactOBS trace to alloc.max_sparsity (tables.py), and where the default's
    check runs (allocation/guard.py), the uniform solve; None for the other allocations
    (mixed levels, the output score: not modelled) and runs without rates. Before it, a
    default --sparsity run's printed plan covered the solve alone, about half the layer
    work (openWakeWord at 50%: allocate 3.8 s, solve 1.6 s)."""
    a, prune = cfg.alloc, cfg.prune
    if (rt is None or not a.active or a.budget == "bops" or a.score != "loss"
            or prune.nm or prune.block or not prune.sparsity):
        return None
    from .allocation.guard import applies

    guard, quant = applies(cfg), bool(cfg.quant.bits)
    return sum(trace_seconds(s, rt, sparsity=a.max_sparsity, row_budget=row) + (
        exact_seconds(s, rt, sparsity=prune.sparsity, quant=quant, candidates=0,
                      row_budget=row) if guard else 0.0) for s in shapes.values())


def exact_applies(cfg: Any) -> bool:
    """Whether any layer of the run can take ExactOBS / OBQ: not with quantization alone at
    choose.FAST_BITS or more (no pruning, no allocation), where the obc method solves only
    GPTQ and RTN; the plan then skips the greedy's micro-benchmark."""
    from .solvers.choose import exact_pays

    q = cfg.quant
    return not q.bits or exact_pays(q.bits) or cfg.prune.active or cfg.alloc.active
