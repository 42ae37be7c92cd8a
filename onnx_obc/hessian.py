"""Layer inputs -> Hessians, on the solver's device, batch by batch.

`columns(use, act)` turns one captured activation into X [G, d, n] (the columns that
multiply W's rows: im2col for Conv, following ONNX Conv semantics exactly: explicit or
auto_pad padding, strides, dilations, 1-D/2-D/3-D, groups). `HessianAccumulator` keeps the
float64 sum of X X^T and the number of calibration samples; H = sum / samples. Each
batch's X X^T is one GEMM in X's precision: float64 by default, float32 (columns' dtype)
for runs that only quantize at 8 bits (tier.hessian_dtype), where it is within float32
rounding of float64 and half the im2col memory and GEMM time.
For those 8-bit runs `columns` can also take a subgrid of the output positions (`step`,
position_step): every step-th position along each spatial axis (tokens for MatMul), the
subgrid's phase moving from sample to sample, the columns scaled by sqrt(positions / kept)
so that H stays an estimate of the same X X^T / N; step 1 is the full X.
`BlockHessianAccumulator` keeps only the k diagonal blocks of that sum over contiguous
column blocks (never the d x d matrix), for layers whose full Hessian does not fit;
`DiagonalAccumulator` only its diagonal (8-bit quantization alone, tier.diagonal_hessians).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

from . import deconv
from .backend import array_module
from .layers import Layer, Use


def conv_pads(use: Use, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis, resolving auto_pad like onnxruntime."""
    nd = len(spatial)
    if use.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, dl in zip(spatial, use.kernel, use.strides, use.dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * dl + 1 - size)
            small = total // 2
            pads.append((small, total - small) if use.auto_pad == "SAME_UPPER"
                        else (total - small, small))
        return pads
    if use.auto_pad == "VALID":
        return [(0, 0)] * nd
    return [(use.pads[i], use.pads[i + nd]) for i in range(nd)]


def conv_out(use: Use, spatial: tuple[int, ...]) -> list[int]:
    """The Conv's output size per spatial axis for an input of `spatial`."""
    padded = [n + a + b for n, (a, b) in zip(spatial, conv_pads(use, spatial))]
    return [(size - ((k - 1) * dl + 1)) // s + 1
            for size, k, s, dl in zip(padded, use.kernel, use.strides, use.dilations)]


def conv_columns(use: Use, x: Any, step: int = 1, phase: int = 0, dtype: Any = None) -> Any:
    """x [N, C, *S] -> X [G, C/G * prod(k), N * L] with W's (Cin, *kernel) column order, in
    `dtype` (default x's). step > 1: only the output positions i with i % step == the
    phase's digit (base step) on each spatial axis (L the subgrid's positions). Each kernel
    offset's patch is copied once, straight into X's layout, from x itself: the padding's
    zeros are X's (each offset writes the positions whose input lies inside x), so no
    padded copy of the whole activation is made (it cost as much as the rest at step 4)."""
    xp = array_module(x)
    N, C = x.shape[:2]
    sizes = tuple(x.shape[2:])
    pads = conv_pads(use, sizes)
    offs = [(phase // step ** i) % step if step > 1 else 0 for i in range(len(sizes))]
    starts = [o * s for o, s in zip(offs, use.strides)]  # in padded coordinates
    strides = tuple(s * step for s in use.strides)
    out = [max(0, (n + a + b - q - ((k - 1) * dl + 1)) // s + 1)
           for n, (a, b), q, k, s, dl in zip(sizes, pads, starts, use.kernel, strides,
                                               use.dilations)]
    G, K, L = use.group, math.prod(use.kernel), math.prod(out)
    dt = x.dtype if dtype is None else dtype
    padded = any(a or b for a, b in pads)
    X = (xp.zeros if padded else xp.empty)((C, K, N, *out), dtype=dt)
    for j, koffs in enumerate(itertools.product(*(range(k) for k in use.kernel)) if L else ()):
        src, dst = [], []
        for n, (a, _), q, ko, s, dl, m in zip(sizes, pads, starts, koffs, strides,
                                                use.dilations, out):
            first = q + ko * dl - a  # x's index of output position 0 (may be outside)
            lo = max(0, -(first // s)) if first < 0 else 0  # ceil(-first / s)
            hi = min(m, (n - 1 - first) // s + 1) if n - 1 >= first else 0
            hi = max(hi, lo)
            src.append(slice(first + lo * s, first + (hi - 1) * s + 1 if hi > lo else
                             first + lo * s, s))
            dst.append(slice(lo, hi))
        if all(d.stop > d.start for d in dst):
            X[(slice(None), j, slice(None), *dst)] = xp.swapaxes(
                x[(slice(None), slice(None), *src)], 0, 1)  # [C, N, *out]
    return X.reshape(G, (C // G) * K, N * L)  # [G, d, N*L]: (c, k) rows, (n, l) columns


def linear_columns(use: Use, x: Any, d: int) -> Any:
    """MatMul/Gemm activation -> X [1, d, n]; Gemm alpha is folded in (output = alpha W x)."""
    if use.trans_a:
        X = x.reshape(d, -1)  # A [K, M]
    else:
        X = x.reshape(-1, d).T  # [..., K] -> [K, n]
    if use.alpha != 1.0:
        X = X * use.alpha
    return X[None]


def columns(layer: Layer, use: Use, act: Any, budget_bytes: int, dtype: Any = None,
            step: int = 1, phase: int = 0) -> Iterator[Any]:
    """Yield X [G, d, n] chunks (float64, or `dtype`) for one activation, each within
    budget_bytes (as float64). step > 1: each sample keeps one subgrid of the positions
    (conv_columns; tokens t with t % step == its phase for MatMul / Gemm), the phases
    taken in turn by the samples (`phase`: the overall index of act's first sample, so
    that every subgrid gets the same share of the samples whatever the batch size), each
    chunk scaled by sqrt(positions / kept)."""
    xp = array_module(act)
    dtype = xp.float64 if dtype is None else dtype
    G, _, d = layer.matrix_shape
    if layer.layout == "deconv":  # the equivalent Conv, chunk by chunk (deconv.py)
        yield from deconv.full_columns(use, act, budget_bytes, dtype)
        return
    if layer.layout != "conv":
        X = linear_columns(use, act, d)
        if step > 1:
            n = X.shape[2]
            i = xp.arange(n)
            t = max(1, n // max(1, act.shape[0]))  # tokens per sample
            keep = (i % t + i // t + phase) % step == 0
            X = X[:, :, keep] * math.sqrt(n / max(int(keep.sum()), 1))
        yield X.astype(dtype)
        return
    N = act.shape[0]
    per_sample = 8 * d * G * max(1, math.prod(act.shape[2:])) * 2
    chunk = max(1, budget_bytes // per_sample)
    full = math.prod(conv_out(use, tuple(act.shape[2:])))
    P = step ** len(use.kernel)  # the subgrids
    for n0 in range(0, N, chunk):
        part = act[n0:n0 + chunk]
        if step == 1:
            yield conv_columns(use, part, dtype=dtype)
            continue
        for j in range(min(P, part.shape[0])):  # samples n0 + j, n0 + j + P, ...
            X = conv_columns(use, part[j::P], step, (phase + n0 + j) % P, dtype)
            if X.shape[2]:
                X *= math.sqrt(full * part[j::P].shape[0] / X.shape[2])
            yield X


SUBSAMPLE_COLUMNS = 4  # position_step keeps at least this many columns per input (x d)
SUBSAMPLE_MIN = 4096  # and at least this many in all (small layers gain nothing)
MAX_STEP = 4  # and every step-th position along each axis at most


def position_step(layer: Layer, use: Use, shape: tuple[int, ...], samples: int,
                  per_input: int = SUBSAMPLE_COLUMNS, max_step: int = MAX_STEP) -> int:
    """The largest step (1: all positions) whose subgrid of an activation of `shape` still
    gives `samples` calibration samples at least per_input * d columns, every axis keeping
    at least one position per phase; MatMul / Gemm: along the tokens (all but the last
    axis beyond the first)."""
    _, _, d = layer.matrix_shape
    if layer.layout == "deconv":
        return 1  # its positions are mostly the inserted zeros' (deconv.py)
    if layer.layout == "conv":
        out = conv_out(use, tuple(shape[2:]))
    else:
        out = [math.prod(shape[1:-1])] if len(shape) > 2 and not use.trans_a else [1]
    step = 1
    for k in range(2, max_step + 1):
        if min(out) < k or samples * math.prod(o // k for o in out) < max(
                per_input * d, SUBSAMPLE_MIN):
            break
        step = k
    return step


FOLD_COLUMNS = 2  # folds (HessianAccumulator.folds_for) below this many columns per input
FOLD_MAX_D = 2048  # and for layers of at most this many inputs (collect.py)


class HessianAccumulator:
    """Running float64 sum of X X^T over calibration samples, per group: H = total / samples."""

    folds_for, half, half_samples, batches = 0, None, 0, 0  # no folds (subclasses: never)

    def __init__(self, groups: int, d: int, xp: Any, folds_for: int = 0) -> None:
        self.total = xp.zeros((groups, d, d), dtype=xp.float64)  # [G, d, d]
        self.cross = None  # [G, d, d] sum of X0 X^T, when fitting to a reference's inputs X0
        self.samples = 0
        self.columns = 0  # columns of X seen (samples x positions): a bound on H's rank
        # folds_for = N > 0: also the sum over every other batch (`half`, [G, d, d]) where
        # the first batch shows N samples giving fewer than FOLD_COLUMNS * d columns
        # (solvers/shrink.py's held-out halves); dropped after the first batch otherwise
        self.folds_for, self.half, self.half_samples, self.batches = folds_for, None, 0, 0

    def add(self, X: Any, X0: Any = None, rows: Any = None) -> None:
        """X [G, d, n] float64 (or float32: each batch's product in float32, summed in
        float64); X0 (optional, same shape): the dense model's inputs. `rows`: X holds only
        these rows of the layer's columns, the others zero (deconv.phase_columns)."""
        P = X @ X.swapaxes(1, 2)
        deconv.into(self.total, P, rows)
        self.columns += X.shape[2]
        if self.folds_for and self.batches % 2 == 0:
            self.half = self.total * 0.0 if self.half is None else self.half
            deconv.into(self.half, P, rows)
        if X0 is not None:
            if self.cross is None:
                self.cross = self.total * 0.0
            deconv.into(self.cross, X0 @ X.swapaxes(1, 2), rows)

    def count(self, samples: int) -> None:
        if self.folds_for and self.batches == 0 and self.columns * self.folds_for >= (
                FOLD_COLUMNS * self.total.shape[-1] * max(samples, 1)):
            self.folds_for, self.half = 0, None  # enough columns: no folds
        if self.folds_for and self.batches % 2 == 0:
            self.half_samples += samples
        self.batches += 1
        self.samples += samples

    @property
    def has_folds(self) -> bool:
        """Whether take_folds has two halves to give (each with samples)."""
        return self.half is not None and 0 < self.half_samples < self.samples

    def take_folds(self) -> tuple[Any, Any] | None:
        """The Hessian means of the two halves (even and odd batches), or None (no folds,
        or a half without samples); call before take_mean."""
        if not self.has_folds:
            return None
        return (self.half / self.half_samples,
                (self.total - self.half) / (self.samples - self.half_samples))

    def merge(self, other: HessianAccumulator) -> None:
        self.total += other.total
        if other.cross is not None:
            self.cross = other.cross.copy() if self.cross is None else self.cross + other.cross
        self.samples += other.samples
        self.columns += other.columns
        self.folds_for, self.half = 0, None  # halves of different batch orders: none

    def mean(self) -> Any:
        """H [G, d, d] = X X^T / N (N = calibration samples, not tokens or positions)."""
        if self.samples == 0:
            raise ValueError("no calibration samples were accumulated")
        return self.total / self.samples

    def take_mean(self) -> tuple[Any, Any]:
        """(H, C): mean() and the cross moments' mean (None unless sequential), computed in
        place (no second copy of the sums); the accumulator is spent afterwards."""
        if self.samples == 0 or self.total is None:
            raise ValueError("no calibration samples were accumulated (or already taken)")
        H, C = self.total, self.cross
        H /= self.samples
        if C is not None:
            C /= self.samples
        self.total = self.cross = None
        return H, C


class BlockHessianAccumulator(HessianAccumulator):
    """The diagonal blocks of sum X X^T over k contiguous column blocks of bs = d / k
    columns each: total [G, k, bs, bs] (float64), G * d * bs * 8 bytes instead of G * d^2 * 8.
    mean() is [G, k, bs, bs]: block j is H[g, j*bs:(j+1)*bs, j*bs:(j+1)*bs]."""

    def __init__(self, groups: int, d: int, blocks: int, xp: Any) -> None:
        if blocks < 1 or d % blocks:
            raise ValueError(f"{blocks} blocks do not divide the layer's {d} columns")
        bs = d // blocks
        self.blocks = blocks
        self.total = xp.zeros((groups, blocks, bs, bs), dtype=xp.float64)  # [G, k, bs, bs]
        self.cross = None  # sequential mode is not supported with blocks
        self.samples = 0
        self.columns = 0

    def add(self, X: Any, X0: Any = None) -> None:
        """X [G, d, n] float64: each block's rows of X times their transpose."""
        if X0 is not None:
            raise ValueError("block-diagonal Hessians do not keep the cross moments of "
                             "sequential mode")
        G, d, n = X.shape
        Xb = X.reshape(G, self.blocks, d // self.blocks, n)  # [G, k, bs, n]
        self.total += Xb @ Xb.swapaxes(2, 3)
        self.columns += n


class DiagonalAccumulator(HessianAccumulator):
    """Only diag(sum X X^T), each input's energy: total [G, d] (float64), O(n d) per batch
    instead of the product's O(n d^2). mean() is [G, d], diag(H); the 8-bit solves that
    take it (tier.diagonal_hessians) are RTN on a grid searched under it."""

    def __init__(self, groups: int, d: int, xp: Any) -> None:
        self.total = xp.zeros((groups, d), dtype=xp.float64)  # [G, d]
        self.cross = None  # sequential mode keeps the full Hessians
        self.samples = 0
        self.columns = 0

    def add(self, X: Any, X0: Any = None, rows: Any = None) -> None:
        """X [G, d, n] (float32 or float64), or X's `rows` only: the squares in float64."""
        if X0 is not None:
            raise ValueError("diagonal Hessians do not keep the cross moments of sequential "
                             "mode")
        xp = array_module(X)
        self.total[:, slice(None) if rows is None else xp.asarray(rows)] += xp.square(X).sum(
            axis=2, dtype=xp.float64)
        self.columns += X.shape[2]
