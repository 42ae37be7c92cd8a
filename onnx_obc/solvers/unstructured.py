"""Unstructured ExactOBS: the greedy traces of every row (fast.py), the global selection of
the `count` cheapest steps across rows and the exact rebuild on the masks (select.py).
Registered as the "obc" pruning stage of Unstructured, and its loss tracer."""

from __future__ import annotations

from ..backend import array_module
from .fast import greedy_traces
from .registry import register_pruner, register_tracer
from .select import rebuild, select_counts
from .solution import Pruned, Stage
from .structures import Unstructured
from .traces import LossTraces


@register_pruner(Unstructured, "obc")
def obs_prune(stage: Stage, st: Unstructured, count: int) -> Pruned:
    """`count` weights removed from the rows [R, d], selected globally across rows."""
    xp = array_module(stage.rows, stage.Hinv)
    d = stage.rows.shape[1]
    tr = greedy_traces(stage.rows, stage.Hinv, stage.group, stage.rows_per_batch, count)
    counts = select_counts(tr.keys, count)  # [R]
    rows = rebuild(stage.rows, stage.Hinv, stage.group, tr.order, counts, stage.rows_per_batch)
    steps = xp.arange(d)[None, :] < counts[:, None]  # [R, d] selected steps
    return Pruned(rows=rows, obs_loss=float(xp.where(steps, tr.losses, 0.0).sum()),
                  steps_run=tr.steps_run, rerun_rows=tr.rerun_rows)


@register_tracer(Unstructured)
def obs_traces(stage: Stage, st: Unstructured, max_count: int | None) -> LossTraces:
    """Traces of every row; with `max_count`, rows stop once their later steps cannot be
    selected at that count (nor at any smaller one)."""
    tr = greedy_traces(stage.rows, stage.Hinv, stage.group, stage.rows_per_batch, max_count)
    return LossTraces(stage, tr.keys, tr.losses, tr.order, 1)
