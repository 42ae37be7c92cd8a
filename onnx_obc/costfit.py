"""`--time-budget`'s choice, per layer, of ExactOBS / OBQ or the fast path (GPTQ /
SparseGPT), and of the column blocks each is solved in, so the predicted solve fits.

Every layer starts on the fast path at the blocks the memory plan gave it. When that alone
is predicted over the budget, the blocked layers' blocks are halved (block-diagonal H over
smaller blocks: the fast path costs ~bs^2 per row and column instead of ~d^2), the layer
whose halving saves the most seconds first, until the total fits. When even blocks of
MIN_BLOCK columns do not fit, the halving would only lose accuracy (a coarser block-diagonal
H) without meeting the budget: every layer keeps the memory plan's blocks on the fast path
and a warning says the budget is missed. Exact solves are
then bought, cheapest extra seconds per weight first, while the predicted total stays within
the budget (a weight's expected gain from an exact solve is about the same across layers, so
this buys the most exactly-solved weights for the time); a blocked layer may get its exact
solve on smaller blocks when its memory-sized blocks cost too much.
"""

from __future__ import annotations

from dataclasses import replace

from .costmodel import Rates, Shape, exact_seconds, fast_seconds, hessian_bytes, solver_bytes
from .costmem import MIN_BLOCK, blocked as in_blocks
from .costplan import LayerPlan, Plan


def fit_time(plan: Plan, rt: Rates, sparsity: float, quant: bool, row: int,
             align: int) -> Plan:
    """Choose per layer ExactOBS or the fast path so the predicted total fits the budget."""
    T = plan.time_budget_s
    layers = [replace(p, method="gptq", seconds=p.fast_seconds or 0.0) for p in plan.layers]
    shrunk = _shrink_fast(layers, rt, sparsity, quant, row, align, T)
    left = T - sum(p.seconds for p in shrunk)
    warnings = list(plan.warnings)
    if left < 0:  # unreachable: keep the memory plan's (more accurate) blocks
        kept = sum(p.seconds for p in layers)
        blocked = any(p.blocks > 1 for p in layers)
        warnings.append(f"the fast path alone is predicted to take {kept:.0f} s, more than "
                        f"the --time-budget {T:g} s"
                        + (f" (still {T - left:.0f} s in blocks of {MIN_BLOCK} columns): every "
                           "layer takes the fast path, in the memory plan's column blocks"
                           if blocked else ": every layer takes the fast path"))
        return replace(plan, layers=layers, warnings=warnings)
    layers = shrunk
    options = {}
    for i, p in enumerate(plan.layers):  # exact at the planned blocks, or at smaller ones
        opts, bs = [(p.blocks, p.exact_seconds)], p.d // p.blocks
        while p.blocks > 1 and bs // 2 >= max(MIN_BLOCK, align):
            bs //= 2
            s = in_blocks(Shape(p.G, p.r, p.d), bs, align)
            opts.append((s.k, exact_seconds(s, rt, sparsity=sparsity, quant=quant,
                                            candidates=0, row_budget=row)))
        options[i] = [(k, t - layers[i].seconds) for k, t in opts]
    order = sorted(options, key=lambda i: min(x for _, x in options[i]) / (
        plan.layers[i].G * plan.layers[i].r * plan.layers[i].d))
    for i in order:
        fit = [(k, x) for k, x in options[i] if x <= left]
        if fit:
            k, extra = fit[0]  # the largest blocks that fit
            p = plan.layers[i]
            s = Shape(p.G, p.r, p.d, k)
            t = layers[i].seconds + extra  # the fast path's figures stay as shrunk
            layers[i] = replace(layers[i], method="obc", blocks=k, seconds=t, exact_seconds=t,
                                hessian_bytes=hessian_bytes(s), solver_bytes=solver_bytes(s, row))
            left -= extra
    return replace(plan, layers=layers, warnings=warnings)


def _shrink_fast(layers: list[LayerPlan], rt: Rates, sparsity: float, quant: bool, row: int,
                 align: int, T: float) -> list[LayerPlan]:
    """While the fast path is predicted over T: halve the blocks of the blocked layer whose
    halving saves the most predicted seconds (an unblocked layer keeps its full Hessian)."""
    layers = list(layers)
    while sum(p.seconds for p in layers) > T:
        best = None
        for i, p in enumerate(layers):
            bs = p.d // p.blocks
            if p.blocks == 1 or bs // 2 < max(MIN_BLOCK, align):
                continue
            s = in_blocks(Shape(p.G, p.r, p.d), bs // 2, align)
            t = fast_seconds(s, rt, sparsity=sparsity, quant=quant)
            if t < p.seconds and (best is None or p.seconds - t > best[0]):
                best = (p.seconds - t, i, s, t)
        if best is None:
            break
        _, i, s, t = best
        layers[i] = replace(layers[i], blocks=s.k, seconds=t, fast_seconds=t,
                            hessian_bytes=hessian_bytes(s), solver_bytes=solver_bytes(s, row))
    return layers

