"""Layers written float after the solve: the float candidates a run kept float
(floatcheck.py) and the layers `--float-layer` names (ExportOptions.float_layers). Both are
applied alike, so that the options that repeat a run's float decisions (pinned.py) write the
same file: in a run that prunes, such a layer keeps its solved weights (its zeros, and its
values on the grid they were solved on) written float, its row kept without bits; otherwise
it is taken out of the solutions and keeps its input weights, listed as left uncompressed.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace
from typing import Any

from .errors import ConfigError
from .layers import Layer, Skipped
from .solve import HostSolution, HostWeights


def bits_allocated(cfg: Any) -> bool:
    """Whether the run's allocation chose the layers' bit widths (a float layer would leave
    its budget): `--budget bops`, or a saved profile with bits in its levels; a sparsity,
    params or flops budget allocates zeros only, which a float layer keeps."""
    a = cfg.alloc
    if not a.active or a.budget == "bops":
        return a.active
    if a.profile is None:
        return False
    from .allocation.profiles import load_profile

    return any(level.bits is not None for level in load_profile(a.profile).values())


def check(layers: list[Layer], patterns: tuple[str, ...]) -> None:
    """Each pattern names a layer to compress, before any work: a pattern that matches
    none (a typo) would quietly quantize the layer meant to stay float."""
    labels = [u.node for L in layers for u in L.uses]
    bad = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in labels)]
    if bad:
        some = ", ".join(labels[:6]) + (f" and {len(labels) - 6} more" if len(labels) > 6
                                         else "")
        raise ConfigError(f"export.float_layers {', '.join(map(repr, bad))} matches no layer "
                          f"to compress (glob on node names; the layers: {some}); "
                          "`onnx-obc inspect MODEL` lists them")


def forced(layers: list[Layer], solutions: dict[str, Any], patterns: tuple[str, ...]
           ) -> dict[str, str]:
    """weight -> the `--float-layer` pattern that names it, for the solved layers that any
    of their nodes matches."""
    out = {}
    for L in layers:
        if L.weight in solutions and L.weight not in out:
            for u in L.uses:
                p = next((p for p in patterns if fnmatch.fnmatchcase(u.node, p)), None)
                if p is not None:
                    out[L.weight] = p
                    break
    return out


def unquantized(solutions: dict[str, Any], floats: set[str]) -> dict[str, Any]:
    """`solutions` with those of `floats` as float weights: their solved values (pruned, on
    the grid they were solved on) without codes, so that the export writes them float."""
    return {k: HostSolution(HostWeights(v.compressed.weight), HostWeights(v.baseline.weight))
            if k in floats else v for k, v in solutions.items()}


def solutions_for(layers: list[Layer], solutions: dict[str, Any], floats: set[str],
                  pruned: bool) -> tuple[list[Layer], dict[str, Any]]:
    """The (layers, solutions) a model with `floats` written float is built from."""
    if pruned:
        return layers, unquantized(solutions, floats)
    return ([L for L in layers if L.weight not in floats],
            {k: v for k, v in solutions.items() if k not in floats})


def apply(layers: list[Layer], done: Any, floats: set[str], why: dict[str, str],
          notes: list[str], pruned: bool, measured: list[str] | None = None
          ) -> tuple[list[Layer], Any, list[Skipped]]:
    """(layers, done, skipped) with `floats` written float; `why`: weight -> reason;
    `notes`: the footer's lines; `measured`: the node labels the run's measurement kept
    float (None: no candidate measured), for pinned.py. `done`: schedule.Compressed."""
    decided = {**done.decided, **({"float": measured} if measured is not None else {})}
    if pruned:  # pruned still, each as solved: only the quantization dropped
        rows = [replace(r, bits=None, group_size=None) if r.weight in floats else r
                for r in done.rows]
        return layers, replace(done, solutions=unquantized(done.solutions, floats), rows=rows,
                               notes=[*done.notes, *notes], decided=decided), []
    skipped = [Skipped(u.node, u.op, why[L.weight], L.weight)
               for L in layers if L.weight in floats for u in L.uses]
    done = replace(done, solutions={k: v for k, v in done.solutions.items() if k not in floats},
                   rows=[r for r in done.rows if r.weight not in floats],
                   notes=[*done.notes, *notes], decided=decided)
    return [L for L in layers if L.weight not in floats], done, skipped


def nodes(layers: list[Layer], weights: set[str]) -> list[str]:
    """The node labels of the layers of `weights`, in graph order."""
    return [u.node for L in layers if L.weight in weights for u in L.uses]
