"""Quantization grids for weights: fixed per output row (and per column group) before OBQ.

Symmetric (default, what TensorRT requires): zero point 0 and the narrow signed range
[-(2^(b-1) - 1), 2^(b-1) - 1] (int8 weights in [-127, 127]), scale = max|w| / (2^(b-1) - 1).
Asymmetric: codes [0, 2^b - 1], zero point round(-min/scale); 0 stays exactly representable.
Clipping search (OBC's, on by default): shrink the range by p = 1, 0.99, ... , 0.21 and keep,
per row (group), the p minimising sum |q(w) - w|^2.4, weighted by H_jj when the layer
Hessian is given (and never worse than min-max under H). All arrays are NumPy or CuPy.

    q(x) = scale * (clip(round(x / scale) + zero, qmin, qmax) - zero)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backend import array_module
from .errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class QuantSpec:
    bits: int
    symmetric: bool = True
    mse: bool = True  # OBC clipping search; False = plain min-max
    group_size: int | None = None  # columns per scale group (None: one per output channel)
    norm: float = 2.4
    grid: int = 100
    maxshrink: float = 0.8
    refine: bool | None = None  # H-aware code descent after the solve (solvers/refine.py);
    # None: the method's default (on for "obc", off for "gptq", which stays reference GPTQ)
    reduced: bool = False  # 8-bit codes in 7 bits' range (quant.reduce_range); else as bits

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"bits must be an integer from 2 to 8, got {self.bits!r}")
        g = self.group_size
        if g is not None and (not isinstance(g, int) or g < 2):
            raise ConfigError(f"group_size must be an integer >= 2, got {g!r}")
        if self.refine is not None and not isinstance(self.refine, bool):
            raise ConfigError(f"refine must be true, false or None, got {self.refine!r}")

    @property
    def qmin(self) -> int:
        return -self.qmax if self.symmetric else 0

    @property
    def qmax(self) -> int:
        b = self.bits - 1 if self.reduced else self.bits
        return 2 ** (b - 1) - 1 if self.symmetric else 2**b - 1


@dataclass(frozen=True)
class Grid:
    """scale, zero [R, n_groups] (float64); column j uses group j // group_size."""

    scale: Any
    zero: Any
    qmin: int
    qmax: int
    group_size: int

    def columns(self) -> tuple[Any, Any]:
        """Per-column scale and zero, each [R, d]."""
        xp = array_module(self.scale)
        s = xp.repeat(self.scale, self.group_size, axis=1)
        z = xp.repeat(self.zero, self.group_size, axis=1)
        return s, z


def quantize(x: Any, scale: Any, zero: Any, qmin: int, qmax: int) -> Any:
    """Fake-quantize x onto the grid (dequantized values, x's float dtype); one temporary,
    worked in place."""
    xp = array_module(x)
    t = x / scale
    xp.rint(t, out=t)
    t += zero
    xp.clip(t, qmin, qmax, out=t)
    t -= zero
    t *= scale
    return t.astype(x.dtype, copy=False)


def codes(x: Any, grid: Grid) -> Any:
    """Integer codes [R, d] (signed for symmetric grids) of values already on the grid."""
    xp = array_module(x)
    out = xp.empty((x.shape[0], x.shape[1] // grid.group_size, grid.group_size), xp.int32)
    for rows in _row_chunks(x):
        xg, s, z = _by_group(x[rows], grid, rows)
        t = xg / s
        xp.rint(t, out=t)
        t += z
        out[rows] = xp.clip(t, grid.qmin, grid.qmax, out=t)
    return out.reshape(x.shape)


ROW_CHUNK = 1 << 18  # weights per step of codes() / rtn() on the CPU: 2 MB temporaries, reused
# (an 8210 x 1024 classifier's 67 MB ones were fresh memory each: 0.65 s of its 0.9 s baseline)


def _row_chunks(x: Any) -> list[slice]:
    """Row slices of x [R, d] of about ROW_CHUNK elements on the CPU; one slice elsewhere."""
    R, d = x.shape
    step = max(1, ROW_CHUNK // max(1, d)) if array_module(x).__name__ == "numpy" else max(1, R)
    return [slice(r0, r0 + step) for r0 in range(0, R, step)]


def _by_group(x: Any, grid: Grid, rows: slice = slice(None)) -> tuple[Any, Any, Any]:
    """x [R, d] (the grid's `rows`) as [R, n_groups, group_size], the grid's scale and zero
    [R, n_groups, 1]: elementwise Grid.columns() without its two [R, d] copies."""
    R, d = x.shape
    return (x.reshape(R, d // grid.group_size, grid.group_size), grid.scale[rows, :, None],
            grid.zero[rows, :, None])


def _params(lo: Any, hi: Any, spec: QuantSpec) -> tuple[Any, Any]:
    xp = array_module(lo)
    if spec.symmetric:
        amax = xp.maximum(xp.abs(lo), xp.abs(hi))
        scale = xp.where(amax > 0, amax / spec.qmax, 1.0)
        return scale, xp.zeros_like(scale)
    scale = (hi - lo) / spec.qmax
    scale = xp.where(scale > 0, scale, 1.0)
    zero = xp.clip(xp.round(-lo / scale), 0, spec.qmax)
    return scale, zero


def fit_grid(W: Any, spec: QuantSpec, H: Any = None, coarse: bool | None = None) -> Grid:
    """Grid for W [R, d], per row and column group (d must divide by group_size).
    coarse: the coarse-to-fine search (_coarse_fine) at any width; None: at COARSE_BITS and
    more (an embedding table at 4 bits: 0.61 s against 15.2, the same error to 4 digits).

    H [G, d, d] (optional, undampened; rows are G blocks of R / G): the clipping search
    weighs each column's error by H_jj, sum_j H_jj |q(w_j) - w_j|^norm, so it sees which
    inputs matter to the layer's output (for equal H_jj, e.g. H = I, the same choice as
    without H); then, per row, the grid is kept only where its round-to-nearest loss
    tr(e H e^T) is no worse than min-max's, so the clipping never loses to min-max under H."""
    xp = array_module(W)
    R, d = W.shape
    g = spec.group_size or d
    if d % g:
        raise ConfigError(f"group size {g} does not divide the layer's {d} inputs per output")
    Wd = W.reshape(R, d // g, g)  # [R, G, g], W's dtype (min and max exact in it)
    lo = xp.minimum(Wd.min(axis=2).astype(xp.float64), 0.0)  # the range always contains 0
    hi = xp.maximum(Wd.max(axis=2).astype(xp.float64), 0.0)
    scale, zero = _params(lo, hi, spec)
    if not spec.mse:
        return Grid(scale, zero, spec.qmin, spec.qmax, g)
    if coarse or (coarse is None and spec.bits >= COARSE_BITS):
        return _coarse_fine(W, Wd, lo, hi, spec, g, H)
    Wg = Wd.astype(xp.float64)
    wts = 1.0 if H is None else xp.repeat(_group_diag(H), R // H.shape[0], axis=0).reshape(
        R, d // g, g)  # [R, G, g]: each row's diag(H) (rows are G contiguous blocks)
    s0, z0 = scale, zero
    best = xp.full(scale.shape, xp.inf)
    for i in range(int(spec.maxshrink * spec.grid)):
        p = 1.0 - i / spec.grid
        s, z = _params(p * lo, p * hi, spec)
        q = quantize(Wg, s[..., None], z[..., None], spec.qmin, spec.qmax)
        err = (wts * xp.abs(q - Wg) ** spec.norm).sum(axis=2)  # [R, G]
        better = err < best
        best = xp.where(better, err, best)
        scale = xp.where(better, s, scale)
        zero = xp.where(better, z, zero)
    if H is not None:  # never worse than min-max under H, row by row
        worse = _rtn_row_loss(W, scale, zero, spec, g, H) > _rtn_row_loss(W, s0, z0, spec, g, H)
        scale = xp.where(worse[:, None], s0, scale)
        zero = xp.where(worse[:, None], z0, zero)
    return Grid(scale, zero, spec.qmin, spec.qmax, g)


COARSE_BITS = 8  # grids of at least this many bits: coarse-to-fine search in float32
COARSE_STEP = 4  # the coarse pass tries every COARSE_STEP-th shrink, then its neighbours
STOP = 2.0  # the coarse pass leaves a row (group) once a shrink's error is STOP x its best
SEARCH_CHUNK = 1 << 16  # elements per pass of the search on the CPU (in cache; same numbers)
CHECK_CHUNK = 1 << 20  # weights per step of the min-max check under H (its float64 rounding
# temporaries stay below the allocator's 32 MB mmap threshold: reused, not faulted in)


def _coarse_fine(W: Any, Wd: Any, lo: Any, hi: Any, spec: QuantSpec, g: int, H: Any) -> Grid:
    """fit_grid's search at COARSE_BITS and more (clipping moves the loss little; the search
    was most of an 8-bit layer's time): the same criterion in float32 on every COARSE_STEP-th
    shrink in increasing order, each row (group) left once a shrink's error exceeds STOP x
    its best so far (the bench models' rows leave after 2-3), then on the shrinks around the
    best. The min-max check under H in float32 too; the chosen grid in float64. Wd [R, G, g]:
    W's groups in W's dtype. Passes and check on row chunks (numpy): whole-matrix 67 MB
    temporaries were fresh memory each (ddddocr's classifier: 1.1 s of page faults).
    """
    xp = array_module(W)
    n = int(spec.maxshrink * spec.grid)
    W32 = Wd.astype(xp.float32, copy=False)
    D32 = None if H is None else _group_diag(H).astype(xp.float32)  # [Gh, d]
    lo32, hi32 = lo.astype(xp.float32), hi.astype(xp.float32)
    R = Wd.shape[0]
    rows = max(1, SEARCH_CHUNK // max(1, Wd[0].size)) if xp.__name__ == "numpy" else R

    best_i = xp.zeros(lo.shape, dtype=xp.int64)
    fine = [o for o in range(1 - COARSE_STEP, COARSE_STEP) if o]
    for r0 in range(0, R, rows):  # row chunks: each pass stays in the cache
        sl = slice(r0, r0 + rows)
        w32 = 1.0 if D32 is None else _rows_of(D32, r0, min(R, r0 + rows), R).reshape(
            W32[sl].shape)  # each row's diag(H), float32
        args = (W32[sl], lo32[sl], hi32[sl], w32, spec)
        best = xp.full(lo[sl].shape, xp.inf, dtype=xp.float32)
        bi = xp.zeros(lo[sl].shape, dtype=xp.int64)
        done = xp.zeros(lo[sl].shape, dtype=bool)  # past the best by STOP x: frozen
        for i in range(0, n, COARSE_STEP):
            e = _err(i, *args)
            better = (e < best) & ~done
            best, bi = xp.where(better, e, best), xp.where(better, i, bi)
            done |= e > STOP * best
            if bool(done.all()):
                break
        center = bi
        for o in fine:
            if int(center.max()) + o <= 0:  # all rows at shrink 0 (the coarse pass's first)
                continue
            i = xp.clip(center + o, 0, n - 1)
            e = _err(i, *args)
            better = e < best
            best, bi = xp.where(better, e, best), xp.where(better, i, bi)
        best_i[sl] = bi
    scale, zero = _params((1.0 - best_i / spec.grid) * lo, (1.0 - best_i / spec.grid) * hi, spec)
    if H is not None:  # never worse than min-max under H, row by row (the clipped ones)
        s0, z0 = _params(lo, hi, spec)
        G = H.shape[0]
        moved = xp.nonzero((best_i > 0).reshape(G, R // G, -1).any(axis=(0, 2)))[0]
        H32 = H.astype(xp.float32) if moved.size else None
        step = max(1, CHECK_CHUNK // (G * W.shape[1])) if xp.__name__ == "numpy" else R
        for c0 in range(0, moved.size, step):  # rows j of every group, against min-max's
            rows = (xp.arange(G)[:, None] * (R // G) + moved[None, c0:c0 + step]).reshape(-1)
            worse = (_rtn_row_loss(W[rows], scale[rows], zero[rows], spec, g, H32, xp.float32)
                     > _rtn_row_loss(W[rows], s0[rows], z0[rows], spec, g, H32, xp.float32))
            back = rows[worse]
            scale[back], zero[back] = s0[back], z0[back]
    return Grid(scale, zero, spec.qmin, spec.qmax, g)


def _err(i: Any, W32: Any, lo32: Any, hi32: Any, w32: Any, spec: QuantSpec) -> Any:
    """The clipping criterion sum_j w_j |q(w_j) - w_j|^norm of rows W32 [R, G, g] at shrink
    index i (scalar or [R, G]), in float32: [R, G]."""
    xp = array_module(W32)
    p = 1.0 - (i / spec.grid if isinstance(i, int) else i.astype(xp.float32) / spec.grid)
    sc, z = (a[..., None].astype(xp.float32) for a in _params(p * lo32, p * hi32, spec))
    t = W32 / sc  # quantize(), in place: the dequantized error |q(w) - w|^norm
    xp.rint(t, out=t)
    if spec.symmetric:
        xp.clip(t, spec.qmin, spec.qmax, out=t)
    else:
        t += z
        xp.clip(t, spec.qmin, spec.qmax, out=t)
        t -= z
    t *= sc
    t -= W32
    xp.abs(t, out=t)
    xp.power(t, spec.norm, out=t)
    if not isinstance(w32, float):
        t *= w32
    return t.sum(axis=2)  # [R, G]


def _group_diag(H: Any) -> Any:
    """diag(H) of each Hessian group, [G, d] float64; H is [G, d, d] or its diagonal [G, d]
    (hessian.DiagonalAccumulator)."""
    xp = array_module(H)
    return (H if H.ndim == 2 else xp.diagonal(H, axis1=1, axis2=2)).astype(xp.float64)


def _rows_of(D: Any, r0: int, r1: int, R: int) -> Any:
    """Rows r0:r1 of every row's diag(H) [R, d] from D [G, d] (a view when G = 1)."""
    xp = array_module(D)
    if D.shape[0] == 1:
        return xp.broadcast_to(D[0], (r1 - r0, D.shape[1]))
    return D[xp.arange(r0, r1) // (R // D.shape[0])]


def _rtn_row_loss(W: Any, scale: Any, zero: Any, spec: QuantSpec, g: int, H: Any,
                  dtype: Any = None) -> Any:
    """Round-to-nearest loss e H e^T of every row [R] on the grid (scale, zero [R, G]); the
    rounding in float64, the product in `dtype` (default float64)."""
    xp = array_module(W)
    dtype = xp.float64 if dtype is None else dtype
    R, d = W.shape
    W64 = W.astype(xp.float64)
    s, z = xp.repeat(scale, g, axis=1), xp.repeat(zero, g, axis=1)
    E = (quantize(W64, s, z, spec.qmin, spec.qmax) - W64).reshape(H.shape[0], -1, d)
    E = E.astype(dtype, copy=False)
    HE = E * H.astype(dtype)[:, None, :] if H.ndim == 2 else E @ H.astype(dtype, copy=False)
    return (HE * E).sum(axis=2, dtype=xp.float64).reshape(R)  # H [G, d]: its diagonal


def rtn(W: Any, grid: Grid) -> Any:
    """Round to nearest on the grid: the baseline, in the grid's dtype (float64)."""
    R, d = W.shape
    out = array_module(W).empty((R, d // grid.group_size, grid.group_size), grid.scale.dtype)
    for rows in _row_chunks(W):
        Wg, s, z = _by_group(W[rows], grid, rows)
        out[rows] = quantize(Wg.astype(s.dtype, copy=False), s, z, grid.qmin, grid.qmax)
    return out.reshape(W.shape)
