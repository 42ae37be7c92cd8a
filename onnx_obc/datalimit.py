"""The data-limited flag of a solved layer and the run's warning about such layers: which
ones, how many calibration samples would lift the limit, and which of them had their
Hessian shrunk toward its diagonal (solvers/shrink.py)."""

from __future__ import annotations

import math

from .names import shortener
from .report import NAME_WIDTH, LayerResult


COLLINEAR = 0.01  # a rank deficit of one, or of this share of the live inputs, with at least
ENOUGH = 4  # this many columns per live input, is the inputs' own collinearity, not too
# little data: a LayerNorm's output (every transformer's Q / K / V and FFN input) reads rank
# d - 1 over any number of tokens (all-MiniLM-L6-v2: 383 / 384 on 8,192 columns)


def limited(rank: int | None, columns: int | None, live: int) -> bool:
    """Rank below the live inputs (except a deficit of one or of at most COLLINEAR of them,
    with ENOUGH columns per input); in blocks (no rank) fewer columns than live inputs."""
    if rank is None:
        return bool(columns) and columns < live
    return rank < live and not (columns is not None and columns >= ENOUGH * live
                                and live - rank <= max(1.0, COLLINEAR * live))


def _need(x: LayerResult) -> int:  # samples for as many columns as live inputs
    per = x.columns / x.samples if x.columns and x.samples else 1
    return math.ceil((x.cols - x.dead_inputs) / per)


def data_warning(rows: list[LayerResult]) -> str:
    """Name the data-limited layers (shortened as in the table: a TensorFlow export's node
    names run to hundreds of characters) and the samples that would lift the limit."""
    few = [x for x in rows if x.samples is not None and x.samples < _need(x)]
    need = max((_need(x) for x in few), default=0)
    short = shortener([x.name for x in rows], NAME_WIDTH)
    names = ", ".join(f"{short(x.name)} (rank "
                      f"{x.rank if x.rank is not None else f'<= {x.columns}'}/"
                      f"{x.cols}, {x.samples} samples)"
                      for x in rows[:8]) + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")
    rest = ("the dampening decides the rest" if not any(x.shrink for x in rows) else
            "the dampening, or the diagonal where H was shrunk, decides the rest")
    msg = (f"{len(rows)} layer(s) data-limited (the calibration data spans fewer input "
           f"directions than the layer has inputs; {rest}): {names}.")
    if few:
        msg += f" At least {need} calibration samples would let every one of them reach full rank"
        msg += (" (one column per sample, e.g. globally pooled inputs)." if need and all(
            not x.columns or x.columns == x.samples for x in few) else ".")
    if len(few) < len(rows):
        msg += (" Where there are already more samples than inputs the inputs themselves are "
                "collinear or constant; more samples of the same kind may not lift it.")
    return msg


def shrink_line(rows: list[LayerResult]) -> str:
    """One line naming the layers whose Hessian was shrunk, with their levels ("" if none)."""
    shrunk = [x for x in rows if x.shrink]
    if not shrunk:
        return ""
    short = shortener([x.name for x in shrunk], NAME_WIDTH)
    names = ", ".join(f"{short(x.name)} ({x.shrink:g})" for x in shrunk[:8]) + (
        f" and {len(shrunk) - 8} more" if len(shrunk) > 8 else "")
    return (f"{len(shrunk)} layer(s) solved on H shrunk toward its diagonal, (1 - a) H + "
            f"a diag(H), a chosen by two held-out halves of the samples (--no-shrink: H "
            f"as captured; losses above are under H): {names}")


def run_warnings(rows: list[LayerResult]) -> list[str]:
    """The run's data-limited warning and shrink line over all its layers (a sequential
    run solves them group by group: one line each, not one per group)."""
    short = [x for x in rows if x.data_limited]
    return [w for w in (data_warning(short) if short else "", shrink_line(rows)) if w]
