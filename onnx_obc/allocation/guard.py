"""`--allocate auto`'s check on the whole model: the DP's levels against uniform ones.

The DP minimizes the sum of the layers' losses under the budget, which is not the model's
output error: on two real models the model it chose was worse than uniform sparsity on its
own calibration samples (Basic Pitch at 50%: output error 0.0727 against 0.0596, note F1
against dense 98.90 against 99.51 on the eval clips; openWakeWord's embedding: 0.1557
against 0.1381, 0.321 against 0.242 on other speakers), while on the others it was 3-34
points better (docs/defaults.md). So where the DP runs by default (not asked for with
`--allocate dp`), one-shot, the layers are solved uniform as well, from copies of the same
Hessians (`spare`: only where both sets fit, the Hessians under a third of --memory-budget),
both models are built uncorrected and verified on the run's fidelity samples, and uniform
is kept only where its mean relative output error is lower by more than MARGIN (the
correction's margin: below it, the measurement's noise). Costs one more solve at the
uniform level and one verification pass; the report's notes give both errors.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import onnx

MARGIN = 0.02  # uniform replaces the DP's choice only with an output error this much lower


def applies(cfg: Any) -> bool:
    """Whether the run's DP is the default's choice (`--allocate auto`), one-shot."""
    return (getattr(cfg, "_alloc_auto", None) is not None and cfg.alloc.mode == "dp"
            and not cfg.run.sequential)


def spare(hessians: dict, cfg: Any, plan: Any) -> dict | None:
    """Copies of the Hessian accumulators for the uniform solve (a solve spends them),
    where the check applies and both sets fit; else None."""
    if not applies(cfg) or (plan is not None and 3 * plan.hessian_total > plan.budget_bytes):
        return None
    return {k: copy.deepcopy(v) for k, v in hessians.items()}  # NumPy or CuPy sums


def decide(dense: onnx.ModelProto, proto: onnx.ModelProto, layers: list, done: Any,
           data: Any, runtime: Any, cfg: Any, captured: dict | None = None) -> Any:
    """`done` (schedule.Compressed) as the DP chose it, or with the uniform solutions where
    those measure better (module docstring); either way without `uniform`, with a note."""
    alt = done.uniform
    if alt is None:
        return done
    from .. import export
    from ..verify import References, variant

    kw = dict(which="uncorrected", act_scales=done.act_values, target=cfg.export.runtime,
              target_options=cfg.export.target_options())
    refs, err = References(), {}
    for key, sols in (("dp", done.solutions), ("uniform", alt.solutions)):
        model = export.build(proto, [L for L in layers if L.weight in sols], sols, **kw)
        err[key] = variant(dense, key, model, data, runtime, refs, captured)[1]
    on = next(iter(data.sets()))
    keep = err["uniform"] < (1.0 - MARGIN) * err["dp"]
    note = (f"allocation (--allocate auto): output error on {on} {err['dp']:.4g} with the "
            f"DP's levels, {err['uniform']:.4g} uniform: " + (
                "kept uniform (the DP's sum of layer losses is not the model's error; "
                "--allocate dp keeps the DP)" if keep else
                f"kept the DP (uniform only where {MARGIN:.0%} lower)"))
    decided = {**done.decided, "allocate": "uniform" if keep else "dp"}  # pinned.py
    if not keep:
        return replace(done, uniform=None, notes=[*done.notes, note], decided=decided)
    from ..datalimit import run_warnings

    return replace(done, solutions=alt.solutions, rows=alt.rows, profile={}, uniform=None,
                   skipped=alt.skipped, warnings=[*alt.warnings, *run_warnings(alt.rows)],
                   notes=[*done.notes, note], decided=decided)
