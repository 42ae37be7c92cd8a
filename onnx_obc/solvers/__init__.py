"""Layer solvers: pure array math (NumPy or CuPy), no onnx, onnxruntime, I/O or printing.

`solve_layer` is the entry point: W [G, r, d] and H [G, d, d] in, a `LayerSolution` out.
It prunes (ExactOBS, global selection across rows), quantizes (OBQ on a grid fixed before the
loop), or both (pruning first, then OBQ on the surviving weights with the zeros kept).
Baselines at the same settings: magnitude pruning and round-to-nearest.

What is pruned is a structure type (structures.py: Unstructured, NM, Blocks); which code
runs is looked up in the registry (registry.py) by (structure type, method). `traces` /
`rebuild_at` give a layer's loss and weights at every sparsity level (the allocation's
tables) from one greedy run.
"""

from __future__ import annotations

# the modules that register solvers, pruners, baselines and tracers (import order: no cycles)
from . import baselines, blocks, gptq, nm, unstructured  # noqa: F401
from .baselines import magnitude_prune
from .layer import solve_layer
from .prepare import layer_loss, prepare, rows_per_batch
from .registry import (register_baseline, register_pipeline, register_pruner,
                       register_solver, register_tracer)
from .solution import LayerSolution, Pruned, Stage, Task
from .structures import NM, Blocks, Structure, Unstructured, conv_nm_groups, linear_nm_groups
from .traces import Cut, LossTraces, rebuild_at, traces

__all__ = ["LayerSolution", "solve_layer", "Structure", "Unstructured", "NM", "Blocks",
           "conv_nm_groups", "linear_nm_groups", "traces", "rebuild_at", "LossTraces", "Cut",
           "register_solver", "register_pipeline", "register_pruner", "register_baseline",
           "register_tracer", "Task", "Stage", "Pruned", "prepare", "layer_loss",
           "magnitude_prune", "rows_per_batch"]
