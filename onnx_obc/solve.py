"""Solve every layer on the backend: ExactOBS / OBQ (or the baselines), collect the
compressed and baseline weights in ONNX layout, the integer weights for QDQ export, and the
per-layer report rows."""

from __future__ import annotations

import math
import time

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm.auto import tqdm

from .backend import Backend
from .config import CompressConfig
from .hessian import HessianAccumulator
from .layers import Layer, constant_weights
from .levels import Level
from .qdq import QuantizedWeight
from .quant import Grid
from .qweights import group_size_for, to_onnx
from .report import LayerResult, Report, SkippedLayer
from .solvers import Structure, solve_layer
from .solvers.structured import conv_nm_groups, linear_nm_groups
from .solvers.prepare import fit_to_reference

MB = 1 << 20


def solver_budget(cfg: CompressConfig, backend: Backend) -> int:
    if cfg.run.solver_memory_mb is not None:
        return cfg.run.solver_memory_mb * MB
    free = backend.free_bytes()
    return int(0.6 * free) if free else cfg.run.memory_budget_mb * MB


def solve_all(proto: onnx.ModelProto, layers: list[Layer], hessians: dict[str, HessianAccumulator],
           backend: Backend, cfg: CompressConfig, report: Report, progress: bool,
           level_for: dict[str, Level] | None = None,
           ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, QuantizedWeight],
                      dict[str, QuantizedWeight]]:
    """Solve every layer: compressed and baseline weights (float, ONNX layout) and, when
    quantizing, the integer weights of both for QDQ export. `level_for` (weight -> Level): per-layer
    levels from the allocation; a level's missing bits / structure come from `cfg`."""
    weights = constant_weights(proto.graph)
    budget = solver_budget(cfg, backend)
    new: dict[str, np.ndarray] = {}
    base: dict[str, np.ndarray] = {}
    qweights: dict[str, QuantizedWeight] = {}
    base_q: dict[str, QuantizedWeight] = {}
    bar = tqdm(layers, desc="solve", unit="layer", disable=not progress)
    for L in bar:
        bar.set_postfix_str(L.name[:40])
        t = time.perf_counter()
        lv = None if level_for is None else level_for[L.weight]
        if lv is not None and lv.is_dense and cfg.quant.bits is None:
            report.skipped.append(SkippedLayer(L.name, L.op, (
                f"kept dense (fp32) by the non-uniform allocation (--budget {cfg.alloc.budget})"),
                L.weight))
            hessians.pop(L.weight)
            continue
        spec = cfg.quant.spec(lv.bits if lv is not None and lv.bits else None)
        lspec, why = group_size_for(L, spec) if spec else (None, "")
        if why:
            report.warnings.append(why)
        w = numpy_helper.to_array(weights[L.weight][1])
        W = backend.to_device(L.to_matrix(w).astype(np.float32))  # [G, r, d]
        acc = hessians.pop(L.weight)
        H = acc.mean()
        if acc.cross is not None:  # sequential: fit the dense model's output
            W = fit_to_reference(W, H, acc.cross / acc.samples, max(cfg.solver.damp, 1e-4))
        target = cfg.prune.sparsity if lv is None else lv.sparsity
        nm = cfg.prune.nm if lv is None or lv.nm is None else lv.nm
        st = structure_for(L, cfg, nm=nm)
        if (nm or cfg.prune.block) and st is None:
            m = nm[1] if nm else cfg.prune.block
            report.skipped.append(SkippedLayer(L.name, L.op, (
                f"left dense: its reduction axis ({_axis_len(L)}) does not divide by {m}")))
            if lspec is None:
                continue
            target = None
        elif st is not None and st.kind == "nm":
            target = st.n / st.m
        res = solve_layer(W, H, sparsity=target or None, quant=lspec, structure=st,
                          method=cfg.solver.method, damp=cfg.solver.damp, budget_bytes=budget,
                          act_order=cfg.solver.act_order)
        new[L.weight] = L.from_matrix(backend.to_host(res.W))
        base[L.weight] = L.from_matrix(backend.to_host(res.baseline))
        if lspec is not None:
            qweights[L.weight] = to_onnx(L, backend.to_host(res.codes),
                                         _host_grid(res.grid, backend), lspec.bits)
            base_q[L.weight] = to_onnx(L, backend.to_host(res.baseline_codes),
                                       _host_grid(res.baseline_grid, backend), lspec.bits)
        backend.sync()
        G, r, d = L.matrix_shape
        report.layers.append(LayerResult(
            name=L.name, op=L.op, weight=L.weight, shape=L.shape, rows=G * r, cols=d,
            groups=G, method=cfg.solver.method, sparsity=res.zeros / (G * r * d),
            target=target or 0.0, loss=res.loss, magnitude_loss=res.baseline_loss,
            dead_inputs=res.dead, damp=res.damp, damp_failed=res.escalations,
            seconds=time.perf_counter() - t, work=res.steps_run / (G * r * d),
            rerun_rows=res.rerun_rows, bits=None if lspec is None else lspec.bits,
            group_size=None if lspec is None else lspec.group_size, prune_loss=res.prune_loss))
        if res.escalations:
            report.warnings.append(f"{L.name}: Cholesky failed with dampening "
                                   f"{list(res.escalations)}; used {res.damp}")
        backend.free()
    return new, base, qweights, base_q


def _host_grid(g: Grid, backend: Backend) -> Grid:
    return Grid(backend.to_host(g.scale), backend.to_host(g.zero), g.qmin, g.qmax, g.group_size)


def _axis_len(L: Layer) -> int:
    return L.shape[1] if L.layout == "conv" else L.matrix_shape[2]


def structure_for(L: Layer, cfg: CompressConfig, nm: tuple[int, int] | None = None,
                  block: int | None = None) -> Structure | None:
    """N:M groups / blocks along the reduction axis TensorRT reads: for Conv, m consecutive
    input channels at one kernel position; for MatMul / Gemm, m consecutive inputs (K).
    `nm` / `block` override the configured ones (a per-layer level)."""
    nm = nm or (cfg.prune.nm if block is None else None)
    block = block or (cfg.prune.block if nm is None else None)
    if not nm and not block:
        return None
    m = nm[1] if nm else block
    _, _, d = L.matrix_shape
    if L.layout == "conv":
        groups = conv_nm_groups(L.shape[1], math.prod(L.shape[2:]), m)
    else:
        groups = linear_nm_groups(d, m)
    if groups is None:
        return None
    if nm:
        return Structure("nm", groups, n=nm[0], m=m)
    return Structure("block", groups, size=m)
