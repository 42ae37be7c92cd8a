"""Solve every layer on the backend: ExactOBS / OBQ (or the baselines). The result is
host-side and holds no ONNX types: per layer the compressed and baseline weights in ONNX
layout with, when quantized, their integer codes and grids (export/ turns them into
DequantizeLinear parameters), plus the per-layer report rows, skipped layers and warnings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from .backend import Backend
from .costmodel import Rates, Shape, shrink_seconds
from .datalimit import limited
from .engine import Engine, LocalEngine
from .export.qweights import group_size_for
from .hessian import BlockHessianAccumulator, HessianAccumulator
from .layerjob import (LayerJob, effective_rank, host_grid, searches, solve_cost,  # noqa: F401
                       solve_job)
from .layers import Layer, Skipped, constant_weights, weight_matrix
from .quant import Grid, QuantSpec
from .report import LayerResult
from .solvers import NM, Blocks, Unstructured, conv_nm_groups, linear_nm_groups, shrink
from .solvers.choose import exact_pays
from .solvers.prepare import FIT_COLUMNS, fit_to_reference
from .specs import MB, Pruning, Quantization, RunOptions, SolverOptions

if TYPE_CHECKING:  # annotations only: the allocation package imports this module
    from .allocation import Level
    from .costplan import Plan


# The host's row batches beyond this run slower, not faster (page faults and cache misses
# over the batch's inverses): 50% ExactOBS of one layer, NumPy, 2 cores, row batches of
# 2,032 / 1,000 / 500 / 250 MB: d = 576 (256 rows) 3.96 / 1.98 / 1.78 / 1.56 s, d = 1,152
# 12.9 / 10.6 / 9.4 / 9.9 s, d = 2,304 (96 rows) 27.3 / 22.3 / 21.5 / 22.5 s; MTCNN's O-Net
# at 50% peaked at 2.2 GB with 2,032 MB batches.
HOST_ROW_BATCH = 512 * MB


def solver_budget(run: RunOptions, backend: Backend) -> int:
    """Bytes for the solver's row batches: run.solver_memory_mb, else 60% of the free GPU
    memory on CuPy, else run.memory_budget_mb up to HOST_ROW_BATCH."""
    if run.solver_memory_mb is not None:
        return run.solver_memory_mb * MB
    free = backend.free_bytes()
    return int(0.6 * free) if free else min(run.memory_budget_mb * MB, HOST_ROW_BATCH)


@dataclass(frozen=True)
class HostWeights:
    """One solved weight on the host (NumPy)."""

    weight: np.ndarray  # ONNX layout (values on the grid when quantized, exact zeros)
    codes: np.ndarray | None = None  # [G, r, d] integer codes of the W view; None: float
    grid: Grid | None = None  # the codes' grid over the G * r rows (NumPy arrays)
    bits: int | None = None


@dataclass(frozen=True)
class HostSolution:
    compressed: HostWeights
    baseline: HostWeights  # magnitude pruning and/or RTN at the same settings


@dataclass(frozen=True)
class Solved:
    """What solving a group of layers gives: the convert stage assembles the report."""

    solutions: dict[str, HostSolution] = field(default_factory=dict)  # weight -> solution
    rows: list[LayerResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Plan:
    """A layer's settings, decided before any solve; job False: nothing to solve."""

    L: Layer
    lspec: QuantSpec | None
    structure: Any
    target: float | None
    samples: int
    job: bool = True
    method: str = "obc"  # what the solver runs (the plan's choice under a time budget)
    label: str = "obc"  # the report's method, e.g. "obc-blocked(4 blocks)"
    predicted: float | None = None  # the plan's predicted seconds
    columns: int | None = None  # columns behind H (samples x positions)


def solve_all(proto: onnx.ModelProto, layers: list[Layer],
              hessians: dict[str, HessianAccumulator], backend: Backend, *, prune: Pruning,
              quant: Quantization, solver: SolverOptions, budget_bytes: int,
              level_for: dict[str, Level] | None = None, alloc_budget: str = "sparsity",
              progress: bool = False, engine: Engine | None = None, plan: Plan | None = None
              ) -> Solved:
    """Solve every layer (its Hessian is popped from `hessians`): compressed and baseline
    weights in ONNX layout and, when quantizing, their integer codes and grids. `level_for`
    (weight -> Level): per-layer levels from the allocation (`alloc_budget`: its budget
    kind, for the message of layers it keeps dense); a level's missing bits / structure come
    from `quant` / `prune`. `budget_bytes`: the solver's memory for row batches. `engine`
    runs the layer solves (default: here, one after another). `plan` (costplan.py): per
    layer the method (with a time budget) and the Hessian's column blocks (a layer in
    blocks is solved by solvers/blocked.py), and the predicted seconds."""
    weights = constant_weights(proto.graph)
    out = Solved()
    plans = []
    for L in layers:
        lv = None if level_for is None else level_for[L.weight]
        if lv is not None and lv.is_dense and quant.bits is None:
            out.skipped.append(Skipped(L.name, L.op, (
                f"kept dense (fp32) by the non-uniform allocation (--budget {alloc_budget})"),
                L.weight))
            hessians.pop(L.weight)
            continue
        lspec = _layer_spec(L, quant, lv)
        target = prune.sparsity if lv is None else lv.sparsity
        nm = prune.nm if lv is None or lv.nm is None else lv.nm
        st = structure_for(L, prune, nm=nm, sparsity=target)
        if (nm or prune.block) and st is None:
            out.skipped.append(Skipped(L.name, L.op, dense_reason(L, nm, prune.block)))
            if lspec is None:
                hessians.pop(L.weight)
                plans.append(_Plan(L, None, None, None, 0, job=False))
                continue
            target = None
        elif st is not None:
            target = st.sparsity
        elif target:
            st = Unstructured(target)
        lp = plan.get(L.weight) if plan is not None else None
        plans.append(_Plan(L, lspec, st, target, hessians[L.weight].samples,
                           method=solver.method if lp is None else lp.method,
                           label=solver.method if lp is None else lp.label,
                           predicted=_predicted(lp, plan, hessians[L.weight], st, lspec),
                           columns=getattr(hessians[L.weight], "columns", None)))
    todo = [p for p in plans if p.job]

    def make(i: int) -> LayerJob:
        p = todo[i]
        acc = hessians.pop(p.L.weight)
        folds = acc.take_folds()  # before take_mean spends the sums
        W, H = _matrices(p.L, weights, acc, backend, solver.damp)
        return LayerJob(W, H, p.structure, p.lspec, p.method, solver.damp, budget_bytes,
                        solver.act_order, blocked=isinstance(acc, BlockHessianAccumulator),
                        rank=ranked(p.structure, p.lspec), folds=folds)

    engine = engine or LocalEngine(backend)
    cost = [p.predicted if p.predicted is not None else solve_cost(p.L) for p in todo]
    done = iter(engine.map(solve_job, len(todo), make, cost, desc="solve",
                           labels=[p.L.name for p in todo], progress=progress))
    for p in plans:
        if p.job:
            _assemble(out, p, *next(done), backend)
    return out


def _predicted(lp: Any, plan: Plan | None, acc: HessianAccumulator, structure: Any,
               lspec: QuantSpec | None) -> float | None:
    """The plan's seconds for the layer, with its shrinkage search where the capture kept
    halves (known only after capture: whether a layer is data-limited)."""
    if lp is None or lp.seconds is None or not plan.rates or not acc.has_folds or not searches(
            structure, isinstance(acc, BlockHessianAccumulator)):
        return None if lp is None else lp.seconds
    return lp.seconds + shrink_seconds(
        Shape(lp.G, lp.r, lp.d), Rates(**plan.rates), levels=len(shrink.GRID), rows=shrink.ROWS,
        sparsity=getattr(structure, "sparsity", 0.0) or 0.0, quant=lspec is not None)


def group_summary(group_size: int | None, rows: list[LayerResult]) -> list[str]:
    """One line for the run (a sequential run solves group by group) when --group-size
    leaves some quantized layers per output channel, naming them, so a run whose groups
    mostly fell back does not read as a grouped one (group_size_for decides per layer)."""
    q = [x for x in rows if x.bits]
    if not group_size or not q:
        return []
    grouped = [x for x in q if x.group_size and x.group_size < x.cols]
    if len(grouped) == len(q):
        return []
    size = lambda xs: sum(x.rows * x.cols * x.groups for x in xs)  # noqa: E731
    why = [f"{x.name} ({x.cols} inputs)" for x in q if not any(x is y for y in grouped)]
    more = f" and {len(why) - 4} more" if len(why) > 4 else ""
    return [f"--group-size {group_size}: blocked scales on {len(grouped)} of {len(q)} "
            f"quantized layers ({size(grouped) / max(size(q), 1):.1%} of their weights); the "
            "others are quantized per output channel, the size not dividing their inputs per "
            "output, not a multiple of their kernel size, or equal to their inputs (the "
            f"report's group_size null): {', '.join(why[:4])}{more}"]


def _assemble(out: Solved, p: _Plan, res: Any, rank: int | None, seconds: float,
              backend: Backend) -> None:
    """A solved layer's host weights, report row and warnings into `out`."""
    L, lspec = p.L, p.lspec
    out.solutions[L.weight] = HostSolution(
        _host(L, res.W, res.codes, res.grid, lspec, backend),
        _host(L, res.baseline, res.baseline_codes, res.baseline_grid, lspec, backend))
    out.rows.append(replace(
        _row(L, res, p.label, p.target, lspec, seconds),
        rank=rank, samples=p.samples, predicted_seconds=p.predicted, columns=p.columns,
        data_limited=limited(rank, p.columns, L.matrix_shape[2] - res.dead) if ranked(
            p.structure, lspec) else None))  # None: not computed
    if res.escalations:
        out.warnings.append(f"{L.name}: Cholesky failed with dampening "
                            f"{list(res.escalations)}; used {res.damp}")


def ranked(structure: Any, lspec: QuantSpec | None) -> bool:
    """Whether the solve computes H's rank (the data-limited flag): not for 8-bit quantization
    alone (choose.exact_pays), where its O(d^3) eigendecomposition outweighs the solve."""
    return structure is not None or lspec is None or exact_pays(lspec.bits)


def _layer_spec(L: Layer, quant: Quantization, lv: Level | None) -> QuantSpec | None:
    """The layer's weight grid spec (a level's bits, else quant.bits), or None; per output
    channel where the requested group size does not fit it (group_summary says so)."""
    spec = quant.spec(lv.bits if lv is not None and lv.bits else None)
    return group_size_for(L, spec)[0] if spec else None


def _matrices(L: Layer, weights: dict[str, tuple[str, onnx.TensorProto]],
              acc: HessianAccumulator, backend: Backend, damp: float) -> tuple[Any, Any]:
    """W [G, r, d] float32 and H [G, d, d] on the device; sequential: W fitted to the dense
    model's output."""
    W = backend.to_device(weight_matrix(weights, L))  # [G, r, d] float32
    enough = acc.columns >= FIT_COLUMNS * W.shape[2]  # else the fit learns the samples
    H, C = acc.take_mean()  # in place: the accumulator is not used again
    if C is not None and enough:  # sequential: fit the dense model's output
        W = fit_to_reference(W, H, C, max(damp, 1e-4))
    return W, H


def _host(L: Layer, W: Any, codes: Any, grid: Grid | None, spec: QuantSpec | None,
          backend: Backend) -> HostWeights:
    weight = L.from_matrix(backend.to_host(W))
    if spec is None:
        return HostWeights(weight)
    return HostWeights(weight, backend.to_host(codes), host_grid(grid, backend), spec.bits)


def _row(L: Layer, res: Any, method: str, target: float | None, lspec: QuantSpec | None,
         seconds: float) -> LayerResult:
    G, r, d = L.matrix_shape
    return LayerResult(
        name=L.name, op=L.op, weight=L.weight, shape=L.shape, rows=G * r, cols=d,
        groups=G, method=method, sparsity=res.zeros / (G * r * d),
        target=target or 0.0, loss=res.loss, magnitude_loss=res.baseline_loss,
        dead_inputs=res.dead, damp=res.damp, damp_failed=res.escalations,
        seconds=seconds, work=res.steps_run / (G * r * d),
        rerun_rows=res.rerun_rows, bits=None if lspec is None else lspec.bits,
        method_used=res.method_used, shrink=res.shrink,
        group_size=None if lspec is None else lspec.group_size, prune_loss=res.prune_loss)


NM_DECONV = ("N:M is for sparse kernels, and those run Conv / MatMul / Gemm weights (TensorRT's "
             "sparse tactics, checked by polygraphy), not a ConvTranspose: it would cost "
             "accuracy for no speed")


def dense_reason(L: Layer, nm: tuple[int, int] | None, block: int | None) -> str:
    """Why N:M (nm) or blocks leave L dense: structure_for gave it none."""
    if nm and L.layout == "deconv":
        return "left dense: " + NM_DECONV
    return (f"left dense: its reduction axis ({_axis_len(L)}) does not divide by "
            f"{nm[1] if nm else block}")


def _axis_len(L: Layer) -> int:
    """Input channels (per group) of a Conv / ConvTranspose, inputs of a MatMul / Gemm."""
    return {"conv": L.shape[1], "deconv": L.shape[0]}.get(L.layout, L.matrix_shape[2])


def structure_for(L: Layer, prune: Pruning, nm: tuple[int, int] | None = None,
                  block: int | None = None, *, sparsity: float | None = None
                  ) -> NM | Blocks | None:
    """The layer's N:M / block structure, bound to its column groups along the reduction axis
    TensorRT reads: for Conv, m consecutive input channels at one kernel position; for
    MatMul / Gemm, m consecutive inputs (K). None when unstructured, or when the axis does
    not divide by m. `nm` / `block` override the configured ones (a per-layer level);
    `sparsity` the fraction of blocks (default: prune.sparsity, or 0). None for N:M on a
    ConvTranspose (NM_DECONV)."""
    nm = nm or (prune.nm if block is None else None)
    block = block or (prune.block if nm is None else None)
    if not nm and not block or nm and L.layout == "deconv":
        return None
    m = nm[1] if nm else block
    _, _, d = L.matrix_shape
    if L.layout in ("conv", "deconv"):
        groups = conv_nm_groups(_axis_len(L), math.prod(L.shape[2:]), m)
    else:
        groups = linear_nm_groups(d, m)
    if groups is None:
        return None
    if nm:
        return NM(nm[0], m).on_columns(groups)
    s = prune.sparsity if sparsity is None else sparsity
    return Blocks(m, s or 0.0).on_columns(groups)
