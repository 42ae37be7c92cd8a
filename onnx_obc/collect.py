"""Calibration pass: capture layer inputs with onnxruntime and reduce each batch, on the
solver's device, into per-layer Hessians (and, for activation quantization, into streaming
range observers); activations are dropped batch by batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from tqdm.auto import tqdm

from . import calib as calib_mod
from . import deconv
from .calib import tokens
from .calib.plan import RUN_BATCH
from .actrange import RangeObserver
from .backend import Backend
from .batching import batch_free, per_sample, sample_axes
from .capture import (ARENA_MAX, Runtime, activation_bytes, capture, capture_session,
                      measured_bytes, plan_groups, providers_for)
from .hessian import (FOLD_MAX_D, BlockHessianAccumulator, DiagonalAccumulator,
                      HessianAccumulator, columns, position_step)
from .frontier import Frontier
from .layers import Layer
from .observe import Observers
from .specs import MB



def collect(proto: onnx.ModelProto, layers: list[Layer], data: calib_mod.DataSet, batch: int,
            backend: Backend, memory_mb: int, progress: bool,
            observe: list[str] | None = None, dense: onnx.ModelProto | None = None,
            runtime: Runtime | None = None, blocks: dict[str, int] | None = None,
            hessian_dtype: Any = None, histogram: bool = True, subsample: int = 0,
            free_batch: int = 0, sample_axes: dict[str, int | None] | None = None,
            diagonal: frozenset[str] = frozenset(), means: dict[str, ChannelMean] | None = None,
            shrink: bool = False, folds: bool = False, frontier: Frontier | None = None,
            outputs: Any = None, token_mask: str | None = None
            ) -> tuple[dict[str, HessianAccumulator], dict[str, RangeObserver]]:
    """Hessians of every layer; range observers for the `observe` tensors (host side).

    With `dense` (sequential mode, `proto` partly compressed) each accumulator also gets
    the cross moments of the dense model's layer inputs X with these inputs X_hat (same
    samples): the layer is then fitted to the dense model's output W X. `runtime`: how
    sessions are built (providers, custom-op library); default: the backend's providers.
    `blocks` (weight -> k > 1, from the plan): keep only the k diagonal blocks of that
    layer's Hessian (BlockHessianAccumulator). `hessian_dtype`: the precision of each
    batch's X X^T (default float64; see hessian_dtype()); `histogram`: whether the range
    observers keep x's histogram (only percentile and mse ranges read it); `subsample` > 0:
    each layer's Hessian from a subgrid of its output positions that keeps that many
    columns per input (hessian.position_step; tier.column_floor). `free_batch` > 1 (a model
    whose batch is fixed at 1, Calibration.free_batch): that many samples per run when the
    batch-free graph passes batching.sample_axes' check, one per run otherwise; the same
    tensors either way (`sample_axes`: each input's sample axis, calib.layout; default 0);
    with `dense` both
    models batched, or both one sample per run (the samples must pair up). `diagonal`: the
    weights whose layers keep only diag(H) (DiagonalAccumulator; diagonal_hessians).
    `means` (tensor -> ChannelMean): filled from the same runs where those tensors fit the
    groups the rest needs (no extra pass for them), else left empty (ChannelMean.n == 0).
    `shrink` (a model whose batch is not fixed): runs of CAPTURE_BATCH samples (at most
    `batch`), which cost less time and memory than larger ones (see _passes). `folds`: the
    full Hessians of at most FOLD_MAX_D inputs also keep a sum over every other batch
    where the samples give them fewer than FOLD_COLUMNS columns per input (the held-out
    halves of solvers/shrink.py). `frontier` (sequential, with `dense`): both models run from
    the last group's cut (frontier.py) where the capture is one pass of per-batch runs.
    `outputs` (refs.Captured): fetches its graph outputs in the same runs where they fit
    the groups the rest needs, and hands it each run's (no extra pass for them).
    `token_mask` (an input's name, calib/tokens.py): the Hessians and ranges of the tensors
    laid out [batch, tokens, ...] (not the Conv layers' inputs) and the channels-last means
    from the positions the mask keeps; `outputs` from every position."""
    budget = memory_mb * MB
    rt = runtime or providers_for(backend.name)
    accs = {L.weight: DiagonalAccumulator(L.matrix_shape[0], L.matrix_shape[2], backend.xp)
            if L.weight in diagonal else
            _accumulator(L, (blocks or {}).get(L.weight, 1), backend.xp, data.n if folds else 0)
            for L in layers}
    inputs = {s.name for s in calib_mod.input_specs(proto)}
    units = [list(dict.fromkeys(u.input for u in L.uses if u.input not in inputs))
             for L in layers]
    observers = Observers(proto, observe or [], histogram)
    units += observers.fetch(inputs)
    fetched = {n for unit in units for n in unit}
    extra = [[n] for n in [*(means or {}), *(outputs.names if outputs is not None else ())]
             if n not in inputs and n not in fetched]
    names = list(dict.fromkeys(n for unit in units + extra for n in unit))
    first = data.shape_feed(batch) if hasattr(data, "shape_feed") else next(data.batches(batch))[1]
    sizes = activation_bytes(proto, names, first) if names else {}
    if any(v is None for v in sizes.values()):  # shapes known only at run time: measured
        sizes = measured_bytes(proto, sizes, first, data, rt, budget)
    if free_batch > 1:  # the groups must hold a batched run's tensors (twice with `dense`)
        free_batch = max(1, min(free_batch, FREE_RUN_BYTES // max(1, sum(
            v or 0 for v in sizes.values()))))  # samples per run: see FREE_RUN_BYTES
        k = free_batch * (2 if dense is not None else 1)
        sizes = {n: None if v is None else v * k for n, v in sizes.items()}
    run, groups, keep = _passes(units, extra, sizes, budget, batch, shrink)
    if len(groups) > 1 and observers.padded:  # a Pad copy's source must be in step with it
        observers = Observers(proto, observe or [], histogram, pads=False)
        units = units[:len(layers)] + observers.fetch(inputs)
        run, groups, keep = _passes(units, extra, sizes, budget, batch, shrink)
    if not keep and means and outputs is not None:  # the outputs cost the means their pass
        extra, outputs = [e for e in extra if e[0] in means or e[0] not in outputs.names], None
        run, groups, keep = _passes(units, extra, sizes, budget, batch, shrink)
    big = {n for n, v in sizes.items() if v and v * run // batch >= ARENA_MAX}  # per run
    batch = run
    means = {n: m for n, m in (means or {}).items() if n not in inputs} if keep else {}
    n_batches = -(-data.n // batch)
    bar = tqdm(total=len(groups) * n_batches, desc="capture", unit="batch", disable=not progress)
    done: set[str] = set()
    taken: set[str] = set()  # means complete
    observed: set[str] = set()  # tensors of the groups done
    steps: dict[tuple[str, int], int] = {}  # (weight, use) -> position step
    pending = _Pending(accs, budget // 8, backend.xp)
    convs = {u.input for L in layers if L.layout in ("conv", "deconv")
             for u in L.uses}  # [N, C, ...]: no tokens
    flat = {u.input for L in layers if L.op in ("MatMul", "Gemm") for u in L.uses}
    for group in groups:
        todo = [L for L in layers if L.weight not in done
                and all(u.input in inputs or u.input in group for u in L.uses)]
        arena = not big.intersection(group)  # capture.ARENA_MAX
        cut = frontier is not None and dense is not None and len(groups) == 1
        runs = batched(proto, group, rt, data, free_batch, sample_axes, arena) if (
            group and free_batch > 1 and not cut) else None  # the frontier runs per sample
        ref_runs = batched(dense, group, rt, data, free_batch, sample_axes, arena) if (
            runs is not None and dense is not None) else None
        if dense is not None and (runs is None) != (ref_runs is None):
            runs = ref_runs = None  # both one sample per run, so that the samples pair up
        if frontier is not None:  # only the nodes since the last cut, else from the start
            runs, ref_runs = frontier.pair(proto, dense, group, layers, data.batches, batch, rt,
                                           arena, (runs, ref_runs), len(groups) == 1)
        sess = capture_session(proto, group, rt, prune=True, arena=arena) if (
            group and runs is None) else None
        ref = capture_session(dense, group, rt, prune=True, arena=arena) if (
            group and dense is not None and ref_runs is None) else None
        ref_acts = (ref_runs or capture(ref, group, data.batches(batch))
                    ) if dense is not None else None
        seen = 0  # samples before this batch: the subgrids' phase (hessian.columns)
        for samples, acts in runs or capture(sess, group, data.batches(batch)):
            dense_acts = next(ref_acts)[1] if ref_acts is not None else None
            for n, mean in means.items():  # the correction measures them alike (corrstats)
                if n in group and n not in taken:
                    mean.add(tokens.on_tokens(acts[n], acts, token_mask, mean.axis))
            if outputs is not None and keep:
                outputs.add(acts, seen, samples)
            whole, share = acts, 1.0  # share: of the positions, the tokens (position_step)
            if token_mask is not None:  # the token positions only, from here on
                cut = [n for n in (*group, *inputs) if n not in convs]
                share = float(np.mean(np.asarray(acts[token_mask]) != 0)) if (
                    token_mask in acts) else 1.0
                acts = tokens.select(acts, token_mask, cut, flat)
                if dense_acts is not None:
                    dense_acts = tokens.select(dense_acts, token_mask, cut, flat)
            observers.add(acts, lambda n: n not in observed and (
                n in group or (n in inputs and group is groups[0])))
            last: list = []  # layers sharing an input (Q, K, V) copy it to the device once
            last_ref: list = []
            for L in todo:
                for i, u in enumerate(L.uses):
                    if (L.weight, i) not in steps:  # from one sample's shape, all positions
                        steps[L.weight, i] = position_step(L, u, whole[u.input].shape, round(
                            data.n * share), subsample) if subsample else 1
                    sub = {"step": steps[L.weight, i], "phase": seen}
                    chunks = _chunks(L, u, _on_device(last, u.input, acts, backend), budget // 4,
                                     hessian_dtype, sub, accs[L.weight])
                    if dense_acts is None:
                        for rows, X in chunks:
                            pending.add(L.weight, X, rows)
                        continue
                    ref_chunks = _chunks(L, u, _on_device(last_ref, u.input, dense_acts, backend),
                                         budget // 4, hessian_dtype, sub, accs[L.weight])
                    for (rows, X), (_, X0) in zip(chunks, ref_chunks):
                        accs[L.weight].add(X, X0, rows=rows)
                accs[L.weight].count(samples)
            seen += samples
            bar.update(1)
        pending.flush()
        if frontier is not None:
            frontier.commit()
        taken.update(n for n in means if n in group)  # a tensor in two groups counts once
        observed.update(group)  # so does an observed one
        done.update(L.weight for L in todo)
        backend.free()
    bar.close()
    return accs, observers.result()


CAPTURE_BATCH = RUN_BATCH  # `shrink`: samples per capture run (calib.plan.RUN_BATCH)
# A fixed-batch model's batch-free capture runs fetch at most this many bytes (fewer than
# `free_batch` samples where one sample's tensors are large; one: the per-sample runs).
# ddddocr's detector (416 x 416, over 80 MB fetched a sample) at 8 samples a run: W8A8
# capture 16.7 s, peak RSS 2.5 GB; at 4 13.2 s, 1.5 GB; one a run (this bound) 11.8-12.2 s,
# 1.1 GB, the same file (docs/conversion-time.md). Its recognizer (under 5 MB a
# sample) keeps 8, where 4 cost it 7% more CPU time.
FREE_RUN_BYTES = 160 << 20


def _passes(units: list[list[str]], extra: list[list[str]], sizes: dict[str, int | None],
            budget: int, batch: int, shrink: bool) -> tuple[int, list[list[str]], bool]:
    """(samples per run, groups of tensors fetched together, whether the `extra` tensors are
    in them): runs of CAPTURE_BATCH samples where `shrink` (else `batch`), in one pass with
    the `extra` tensors where that fits; else one pass without them; else groups, with them
    where they add no pass. `sizes`: per run of `batch` samples."""
    def groups(b: int, us: list[list[str]]) -> list[list[str]]:
        return plan_groups(us, {n: None if v is None else v * b // batch
                                for n, v in sizes.items()}, budget) if us else [[]]

    run = min(batch, CAPTURE_BATCH) if shrink else batch
    for us, keep in ((units + extra, True), (units, False)) if extra else ((units, True),):
        if len(g := groups(run, us)) == 1:
            return run, g, keep
    plain, both = groups(run, units), groups(run, units + extra)
    return (run, both, True) if len(both) == len(plain) else (run, plain, False)


class ChannelMean:
    """Streaming per-channel mean of a tensor (channel `axis`), summed in float64."""

    def __init__(self, axis: int) -> None:
        self.axis, self.n, self.sum = axis, 0, 0.0

    def add(self, y: Any) -> None:
        """One einsum over y as [before, M, after] (float64 sums): 1.3-1.7x numpy's sum over
        the other axes on EfficientNet-Lite0's [8, C, H, W] outputs."""
        ax = self.axis % y.ndim
        lead, rest = (int(np.prod(y.shape[s], dtype=np.int64)) for s in (
            slice(None, ax), slice(ax + 1, None)))
        self.sum = self.sum + np.einsum("acb->c", y.reshape(lead, y.shape[ax], rest),
                                        dtype="float64")
        self.n += y.size // y.shape[ax]

    def mean(self) -> Any:
        return self.sum / self.n


def _chunks(L: Layer, u: Any, act: Any, budget: int, dtype: Any, sub: dict, acc: Any) -> Any:
    """(rows, X): a ConvTranspose's phases (blocks of a full H, deconv.py), else rows None."""
    if L.layout == "deconv" and type(acc) in (HessianAccumulator, DiagonalAccumulator):
        return deconv.phase_columns(u, act, budget, dtype)
    return ((None, X) for X in columns(L, u, act, budget, dtype, **sub))


class _Pending:
    """float32 column chunks narrower than their layer's d (one sample of a fixed-batch
    model, one subgrid of a small batch) gathered per layer until d columns (or
    `limit` bytes) wide, then added as one product: the d x d float64 sum once per d
    columns instead of once per chunk. float64 chunks (runs below 8 bits) go straight in."""

    def __init__(self, accs: dict, limit: int, xp: Any) -> None:
        self.accs, self.limit, self.xp = accs, limit, xp
        self.parts: dict[str, list] = {}

    def add(self, weight: str, X: Any, rows: Any = None) -> None:
        G, d, n = X.shape
        if rows is not None:  # a ConvTranspose's phase: its block of H
            return self.accs[weight].add(X, rows=rows)
        if X.dtype != self.xp.float32 or n >= d or isinstance(self.accs[weight],
                                                               DiagonalAccumulator):
            self.accs[weight].add(X)
            return
        parts = self.parts.setdefault(weight, [])
        parts.append(X)
        wide = sum(p.shape[2] for p in parts)
        if wide >= d or wide * G * d * 4 >= self.limit:
            self.flush(weight)

    def flush(self, weight: str | None = None) -> None:
        for k in [weight] if weight is not None else list(self.parts):
            parts = self.parts.pop(k, [])
            if parts:
                self.accs[k].add(parts[0] if len(parts) == 1 else self.xp.concatenate(
                    parts, axis=2))


def batched(proto: onnx.ModelProto, group: list[str], rt: Runtime, data: Any, free: int,
             axes: dict[str, int | None] | None, arena: bool = True) -> Any:
    """The per-sample tensors of `group` from runs of `free` samples at once (batching.py),
    or None when the batch-free graph fails the check (then: one sample per run)."""
    inputs = {s.name: 0 for s in calib_mod.input_specs(proto)} | dict(axes or {})
    if any(a is None for a in inputs.values()):  # an input fed whole: no batch to free
        return None
    with batch_free(proto, inputs):
        sess = capture_session(proto, group, rt, prune=True, arena=arena)
    axes = sample_axes(sess, group, data)
    if axes is None:
        return None
    return per_sample(sess, group, axes, inputs, data.batches(free))


def _on_device(last: list, name: str, acts: dict, backend: Backend) -> Any:
    """acts[name] on the backend's device, copied once for consecutive uses of one input;
    `last` ([name, copy]) keeps only the latest copy."""
    if not last or last[0] != name:
        last[:] = [name, backend.to_device(acts[name])]
    return last[1]


def _accumulator(L: Layer, k: int, xp: object, folds_for: int = 0) -> HessianAccumulator:
    G, _, d = L.matrix_shape
    return BlockHessianAccumulator(G, d, k, xp) if k > 1 else HessianAccumulator(
        G, d, xp, folds_for if d <= FOLD_MAX_D else 0)
