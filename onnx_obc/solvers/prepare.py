"""Turn a layer Hessian into what the OBS solvers need: dead inputs, dampening, H^-1.

Notation (paper): W [rows, d] with rows = output channels and d = flattened inputs;
H = X X^T / N [d, d] (the paper's 2 X X^T / N without the factor 2, which cancels in every
OBS formula; see docs/numerics.md). Grouped convolutions carry one Hessian per group, so
arrays here have a leading group axis G: W [G, r, d], H [G, d, d].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import array_module, cholesky
from ..errors import NotPositiveDefinite, ObcError
from .solution import Stage

# relative dampening steps tried, in order, after the configured one fails
ESCALATION = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# An input whose energy H_jj is at most this times the layer's largest (every group's) is
# dead too: amplitudes 1e-12 of the largest. PP-OCRv6's detector has 26 depthwise channels
# of ~1e-40 (denormal) activations and weights: H_jj ~ 1e-79, dampened relative to that
# group alone, gave H^-1 ~ 1e80, past float32, and the 50% allocation's traces NaN.
DEAD_REL = 1e-24


@dataclass(frozen=True)
class Prepared:
    """Solver-ready layer. Arrays live on the input's device."""

    W: Any  # [G, r, d] float32, dead columns zeroed
    H: Any  # [G, d, d] float64, dead diagonal filled and dampened
    Hinv: Any  # [G, d, d] float64 (None: not computed, prepare(inverse=False))
    dead: int  # dead input columns (zero diagonal of H), summed over groups
    damp: float  # relative dampening finally used
    escalations: tuple[float, ...]  # dampening values that failed before `damp`
    factor: Any = None  # [G, d, d] prepare(factor=True): each group's lower Cholesky factor
    # of H in act order (descending diagonal), reversed: what gptq.inverse_factor factors


def prepare(W: Any, H: Any, damp: float, inverse: bool = True, factor: bool = False
            ) -> Prepared:
    """Dead inputs (H_jj <= DEAD_REL * the layer's largest) -> H_jj = mean live diag of
    the group (1 where none is live) and W[:, j] = 0; H += damp*mean(diag)*I; Hinv
    (inverse=False: not computed, only the Cholesky that checks the dampening; GPTQ at 8
    bits factors H itself, gptq.inverse_factor). factor (with inverse=False): that check's
    Cholesky is of each group's H in act order, reversed, kept as Prepared.factor for GPTQ
    act-order (one factorisation per layer instead of two; the same factor).

    Dampening is relative (scale invariant). If Cholesky fails, dampening escalates through
    ESCALATION; the failed values are returned so the report can show them. Raises
    NotPositiveDefinite if even damp = 1 fails, and ObcError on non-finite H.
    """
    xp = array_module(H)
    G, d, _ = H.shape
    if not bool(xp.isfinite(H).all()):
        raise ObcError(
            "the Hessian contains NaN or inf: the calibration activations of this layer are "
            "not finite. Check the calibration data (NaN/inf inputs, wrong scaling) before "
            "compressing."
        )
    H = H.astype(xp.float64, copy=True)  # [G, d, d]
    W = W.astype(xp.float32, copy=True)  # [G, r, d]
    diag = xp.diagonal(H, axis1=1, axis2=2)  # [G, d] (view)
    dead = diag <= DEAD_REL * max(float(diag.max()), 0.0)  # [G, d]
    n_dead = int(dead.sum())
    if n_dead:
        live_mean = xp.where(dead, 0.0, diag).sum(axis=1) / xp.maximum((~dead).sum(axis=1), 1)
        fill = xp.where(live_mean > 0, live_mean, 1.0)  # [G]
        g_idx, j_idx = xp.nonzero(dead)
        H[g_idx, j_idx, j_idx] = fill[g_idx]
        W = W * (~dead)[:, None, :]  # [G, r, d]
    mean_diag = xp.diagonal(H, axis1=1, axis2=2).mean(axis=1)  # [G]
    eye = xp.eye(d, dtype=xp.float64)
    tried = [damp] + [x for x in ESCALATION if x > damp]
    failed: list[float] = []
    for lam in tried:
        Hd = H + (lam * mean_diag)[:, None, None] * eye  # [G, d, d]
        try:
            L = cholesky(_act_reversed(Hd) if factor and not inverse else Hd)  # lower
        except np.linalg.LinAlgError:
            failed.append(lam)
            continue
        if not inverse:
            return Prepared(W, Hd, None, n_dead, lam, tuple(failed), L if factor else None)
        Linv = xp.linalg.inv(L)  # [G, d, d]
        Hinv = xp.swapaxes(Linv, 1, 2) @ Linv  # H^-1 = L^-T L^-1, symmetric by construction
        return Prepared(W, Hd, Hinv, n_dead, lam, tuple(failed))
    raise NotPositiveDefinite(
        f"the Hessian stayed singular with relative dampening up to {tried[-1]} "
        f"(tried {tried}). Add calibration samples, check for constant or duplicated inputs, "
        "or exclude this layer."
    )


def _act_reversed(H: Any) -> Any:
    """Each group's H [G, d, d] in act order (gptq: descending diagonal, stable), reversed."""
    xp = array_module(H)
    out = xp.empty_like(H)
    for g in range(H.shape[0]):
        perm = xp.argsort(-xp.diagonal(H[g]), kind="stable")
        out[g] = H[g][perm][:, perm][::-1, ::-1]
    return out


def rows_per_batch(d: int, rows: int, budget_bytes: int, itemsize: int = 4) -> int:
    """Rows whose d x d inverse Hessians (plus temporaries) fit in the budget."""
    per_row = 3 * d * d * itemsize + 64 * d
    return max(1, min(rows, budget_bytes // per_row))


def stage_of(prep: Prepared, budget_bytes: int) -> Stage:
    """The rows [R = G * r, d] of a prepared layer, with their groups and batch size."""
    xp = array_module(prep.W, prep.Hinv)
    G, r, d = prep.W.shape
    group = xp.repeat(xp.arange(G), r)  # [R]
    return Stage(prep.W.reshape(G * r, d), prep.Hinv, group,
                 rows_per_batch(d, G * r, budget_bytes))


def layer_loss(W: Any, W_hat: Any, H: Any) -> float:
    """E = sum_g tr(dW_g H_g dW_g^T) = (1/N)||(W_hat - W) X||^2 for H = X X^T / N; H [G, d]
    (diag(H) alone, hessian.DiagonalAccumulator): sum_g sum_j H_gj ||dW_g[:, j]||^2."""
    xp = array_module(W, H)
    G, r, d = W.shape
    step = max(1, LOSS_CHUNK // max(1, G * d) if xp.__name__ == "numpy" else r)
    total = 0.0
    for r0 in range(0, r, step):  # row chunks on the CPU: no layer-sized float64 temporaries
        dW = W_hat[:, r0:r0 + step].astype(xp.float64) - W[:, r0:r0 + step]  # [G, c, d]
        if H.ndim == 2:
            total += float((xp.square(dW).sum(axis=1) * H).sum())
        else:
            total += float(((dW @ H) * dW).sum())
    return total


LOSS_CHUNK = 1 << 18  # weights per step of layer_loss on the CPU (2 MB of float64: an
# 8210 x 1024 classifier's loss took 1 s in 67 MB temporaries, each fresh memory, 0.03 s in
# steps)


FIT_COLUMNS = 8  # sequential mode refits a layer (fit_to_reference) only from at least this
# many columns of X per input (samples x positions >= 8 d): a squeeze-excite conv sees one
# column per sample, and refitted on ppocr_cls's 96 samples the model fell apart (docs/defaults.md)


def fit_to_reference(W: Any, H: Any, C: Any, damp: float) -> Any:
    """Sequential mode: the weights that best map this layer's (compressed-model) inputs X
    to the dense model's output W X0, ridge-regularized towards W:
        W_t = argmin ||W X0 - W' X||^2 + lam ||W' - W||^2 = W (C + lam I)(H + lam I)^-1
    with H = X X^T / N, C = X0 X^T / N [G, d, d], lam = damp * mean(diag H). W_t = W when
    X = X0. Compressing W_t against H then fits the dense output, upstream errors included."""
    xp = array_module(W, H)
    G, _, d = W.shape
    lam = damp * xp.diagonal(H, axis1=1, axis2=2).mean(axis=1)[:, None, None]  # [G, 1, 1]
    lam = xp.where(lam > 0, lam, 1.0)  # a dead group (H = C = 0: a depthwise conv's channel
    # no sample reaches): W_t = W, not a singular system
    eye = xp.eye(d, dtype=xp.float64)
    A = H + lam * eye  # [G, d, d] SPD
    B = W.astype(xp.float64) @ (C + lam * eye)  # [G, r, d]
    # W_t A = B  <=>  A W_t^T = B^T  (A symmetric)
    return xp.swapaxes(xp.linalg.solve(A, xp.swapaxes(B, 1, 2)), 1, 2).astype(W.dtype)
