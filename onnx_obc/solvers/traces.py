"""Loss traces for the per-layer allocation: one greedy run of a layer to its largest level,
from which the loss and the weights at every sparsity level are read.

    tr = traces(W, H, structure, max_sparsity, damp=0.01, budget_bytes=1 << 30)
    cut = tr.at(0.5)          # steps per row, weights removed, summed step loss
    W50 = rebuild_at(tr, 0.5)  # [R, d] float64 rows at that level (exact zeros)

A level's rows are those of the global selection (select.py) over the run's keys; the rows
are rebuilt exactly on their masks. The structure's registered tracer runs the greedy
(registry.register_tracer): None / Unstructured prune weights, Blocks whole blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backend import array_module
from .prepare import prepare, stage_of
from .registry import tracer_for
from .select import rebuild, select_counts
from .solution import Stage
from .structures import Unstructured

__all__ = ["LossTraces", "Cut", "traces", "rebuild_at"]


@dataclass(frozen=True)
class Cut:
    """The traces cut at one sparsity level."""

    steps: Any  # [R] int64 removal steps per row (weights, or blocks)
    removed: int  # weights removed from the layer
    loss: float  # sum of the selected step losses (dampened H)


@dataclass(frozen=True)
class LossTraces:
    """One greedy run of a layer's rows, every level read from it."""

    stage: Stage  # the prepared rows [R, d], inverses, groups and batch size
    keys: Any  # [R, steps] running max of the step losses (selection keys)
    losses: Any  # [R, steps] step losses (+inf where not computed)
    order: Any  # [R, d] columns in removal order (blocks expanded to their columns)
    size: int  # weights per step: 1, or the block size

    def removals(self, sparsity: float) -> Any:
        """Removal steps per row [R] at this sparsity (of the layer's weights)."""
        n = self.stage.rows.size  # G * r * d
        return select_counts(self.keys, round(sparsity * n / self.size))

    def at(self, sparsity: float) -> Cut:
        xp = array_module(self.keys)
        counts = self.removals(sparsity)
        steps = xp.arange(self.keys.shape[1])[None, :] < counts[:, None]
        return Cut(counts, int(counts.sum()) * self.size,
                   float(xp.where(steps, self.losses, 0.0).sum()))

    def loss_at(self, sparsity: float) -> float:
        return self.at(sparsity).loss


def traces(W: Any, H: Any, structure: Any, max_sparsity: float | None, *, damp: float = 0.01,
           budget_bytes: int = 1 << 30) -> LossTraces:
    """Greedy traces of W [G, r, d] given H [G, d, d] for `structure` (None: unstructured;
    Blocks: whole blocks; its sparsity is not used). `max_sparsity`, the largest level read,
    lets rows stop once their later steps cannot be selected there (where the structure's
    tracer supports it); None runs every row to the end."""
    G, r, d = W.shape
    st = Unstructured(0.0) if structure is None else structure
    tracer = tracer_for(st)
    max_count = None if max_sparsity is None else round(max_sparsity * G * r * d)
    return tracer(stage_of(prepare(W, H, damp), budget_bytes), st, max_count)


def rebuild_at(tr: LossTraces, sparsity: float) -> Any:
    """The rows [R, d] (float64, exact zeros) at this sparsity level."""
    s = tr.stage
    counts = tr.removals(sparsity) * tr.size
    return rebuild(s.rows, s.Hinv, s.group, tr.order, counts, s.rows_per_batch)
