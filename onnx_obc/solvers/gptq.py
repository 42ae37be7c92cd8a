"""The fast path: GPTQ quantization and SparseGPT pruning (jointly, in one pass).

One column order shared by all rows (left to right, or by descending diag(H) with
act_order). With U the upper Cholesky factor of H^-1 (H^-1 = U^T U), row i of U holds what
the OBS update after fixing column i needs for the columns still free (the inverse of
H[i:, i:] without re-inverting), so fixing column i of every row at once is
    err = (w_i - target_i) / U_ii ;   W[:, i:] -= err U[i, i:] ;   loss += err^2
done inside blocks of 128 columns, with the rest of the matrix updated lazily once per
block (one matrix product). Pruning (SparseGPT): inside each block, the weights with the
smallest w^2 / U_ii^2 of the current (updated) block are set to 0; the per-block counts add
up to the layer's exact target. Quantization: targets are rounded on a grid fixed before the
loop, in the original column order (so act_order needs no change at inference).
Approximate OBS (later columns compensate, earlier ones do not), O(d^3 + rows d^2).
N:M (SparseGPT's): the columns processed group by group, each row's n of a group's m with the
smallest w^2 / U_jj^2 pruned when the group comes up. Registered as the "gptq" solver of
Unstructured and NM.
"""

from __future__ import annotations

from typing import Any

from ..backend import array_module, cholesky
from ..quant import codes, fit_grid, quantize
from .prepare import layer_loss, prepare
from .refine import descend, wanted
from .registry import register_solver
from .solution import LayerSolution, Task, count_zeros
from .structures import NM, Unstructured

BLOCK = 128


def gptq(W: Any, Hinv: Any, *, scale: Any = None, zero: Any = None, qmin: int = 0,
         qmax: int = 0, sparsity: float = 0.0, act_order: bool = False, diagH: Any = None,
         block: int = BLOCK, H: Any = None, factor: Any = None, nm: Any = None
         ) -> tuple[Any, Any]:
    """W [r, d] rows sharing Hinv [d, d]; scale/zero [r, d] per column (None: no rounding).
    Hinv None: U from the dampened H [d, d] itself (inverse_factor), or from `factor`
    (act_order only: the lower Cholesky factor inverse_factor would take; prepare(factor=1)).
    nm: (n, m, order [d]): N:M pruning instead of `sparsity`, the columns processed in
    `order`, which puts each group of m columns together (SparseGPT's N:M: when a group's
    first column comes up, each row's n of its m with the smallest w^2 / U_jj^2 of the
    updated weights are pruned; act_order is not used).
    Returns (W_hat [r, d], loss = sum of err^2, i.e. tr(dW H dW^T) with the damped H)."""
    xp = array_module(W, H if Hinv is None else Hinv)
    r, d = W.shape
    if nm is not None:
        n_, m_, perm = nm[0], nm[1], xp.asarray(nm[2])
        block, sparsity, act_order = block - block % m_, 0.0, False  # blocks of whole groups
    else:
        perm = xp.argsort(-diagH, kind="stable") if act_order else xp.arange(d)
    inv = xp.argsort(perm)
    W = W.astype(xp.float64)[:, perm]  # [r, d] in processing order
    if Hinv is None and factor is not None and act_order:
        U = upper_inverse(factor[::-1, ::-1])  # as inverse_factor, its Cholesky done
    else:
        U = (inverse_factor(H[perm][:, perm]) if Hinv is None  # [d, d] upper: Hinv = U^T U
             else xp.swapaxes(cholesky(Hinv[perm][:, perm]), 0, 1))
    if scale is not None:
        scale, zero = scale[:, perm], zero[:, perm]
    total = int(round(sparsity * r * d))
    Qt = xp.zeros((d, r), dtype=W.dtype)  # Q transposed: each column step writes a row
    sym = scale is not None and qmin < 0  # symmetric grid (quant.py): zero points all 0
    loss = 0.0
    for i1 in range(0, d, block):
        i2 = min(d, i1 + block)
        # the block transposed [b, r]: column steps on contiguous rows (the same arithmetic,
        # element by element, as on W[:, i1:i2]; the lazy update gets Err as [r, b])
        W1 = xp.ascontiguousarray(W[:, i1:i2].T)  # [b, r]
        U1 = U[i1:i2, i1:i2]  # [b, b]
        Err = xp.zeros_like(W1)  # [b, r]
        prune = None
        if total:  # this block's share of the exact layer count
            k = int(round(total * i2 / d)) - int(round(total * i1 / d))
            sal = (W1.T / xp.diagonal(U1)[None, :]) ** 2  # [r, b] OBS saliency
            prune = xp.zeros(sal.size, dtype=bool)
            prune[xp.argsort(sal.reshape(-1), kind="stable")[:k]] = True
            prune = xp.ascontiguousarray(prune.reshape(sal.shape).T)  # [b, r]
        if scale is not None:
            S1 = xp.ascontiguousarray(scale[:, i1:i2].T)
            Z1 = xp.ascontiguousarray(zero[:, i1:i2].T)
        if nm is not None:
            prune = xp.zeros(W1.shape, dtype=bool)  # [b, r], each group's when it comes up
            diag = xp.diagonal(U1)[:, None]  # [b, 1]
        for i in range(i2 - i1):
            if nm is not None and i % m_ == 0:  # a group's first column: its n of m per row
                sal = (W1[i:i + m_] / diag[i:i + m_]) ** 2  # [m, r] on the updated weights
                rank = xp.argsort(xp.argsort(sal, axis=0, kind="stable"), axis=0)  # [m, r]
                prune[i:i + m_] = rank < n_
            w = W1[i]
            t = w if prune is None else xp.where(prune[i], 0.0, w)
            if sym:  # quantize() without its zero point (rint is round; the codes agree)
                t = xp.rint(t / S1[i])
                xp.clip(t, qmin, qmax, out=t)
                t *= S1[i]
            elif scale is not None:
                t = quantize(t, S1[i], Z1[i], qmin, qmax)
            Qt[i1 + i] = t
            err = (w - t) / U1[i, i]  # [r]
            loss += (err * err).sum()  # stays on the device: no host round trip per column
            W1[i:] -= U1[i, i:][:, None] * err[None, :]
            Err[i] = err
        W[:, i2:] -= xp.ascontiguousarray(Err.T) @ U[i1:i2, i2:]  # lazy update of the rest
    return xp.ascontiguousarray(Qt[inv].T), loss  # loss: a float on the host, a 0-d array
    # on a device


def inverse_factor(H: Any) -> Any:
    """The upper U with H^-1 = U^T U (the Cholesky factor of H^-1, transposed) straight from
    H [d, d] SPD, without forming H^-1: with J the reversal, J H J = M M^T (Cholesky), so
    H = R R^T for the upper R = J M J, and U = R^-1. About d^3 / 3 + d^3 / 3 flops, most of
    them matrix products, against a Cholesky, an inverse and a product for H^-1 first."""
    M = cholesky(H[::-1, ::-1])
    return upper_inverse(M[::-1, ::-1])


def upper_inverse(R: Any, leaf: int = 128) -> Any:
    """R^-1 of an upper-triangular R [d, d] by 2 x 2 blocks (inv [[A, B], [0, C]] =
    [[A^-1, -A^-1 B C^-1], [0, C^-1]]), linalg.inv on blocks of at most `leaf`."""
    xp = array_module(R)
    d = R.shape[0]
    if d <= leaf:
        return xp.triu(xp.linalg.inv(R))
    h = d // 2
    Ai, Ci = upper_inverse(R[:h, :h], leaf), upper_inverse(R[h:, h:], leaf)
    out = xp.zeros_like(R)
    out[:h, :h], out[h:, h:] = Ai, Ci
    out[:h, h:] = -(Ai @ R[:h, h:]) @ Ci
    return out


def gptq_rows(rows: Any, prep: Any, grid: Any, sparsity: float = 0.0,
              act_order: bool = False, nm: Any = None) -> tuple[Any, Any, float]:
    """GPTQ / SparseGPT over every Hessian group of a prepared layer: rows [R = G * r, d]
    (`nm`: (n, m, order), N:M pruning as gptq's). Returns (W_hat [R, d] float64, exactly on
    `grid` when given; codes [R, d] or None; the sum of the step losses, tr(dW H dW^T)
    with the dampened H)."""
    xp = array_module(rows, prep.H)
    G = prep.H.shape[0]
    R, d = rows.shape
    r = R // G
    s, z = grid.columns() if grid else (None, None)
    out = xp.empty((R, d), dtype=xp.float64)
    obs_loss = 0.0
    for g in range(G):
        sl = slice(g * r, (g + 1) * r)
        out[sl], loss = gptq(
            rows[sl], None if prep.Hinv is None else prep.Hinv[g],
            scale=None if s is None else s[sl], H=prep.H[g],
            zero=None if z is None else z[sl], qmin=grid.qmin if grid else 0,
            qmax=grid.qmax if grid else 0, sparsity=sparsity, act_order=act_order, nm=nm,
            diagH=xp.diagonal(prep.H[g]),
            factor=None if getattr(prep, "factor", None) is None else prep.factor[g])
        obs_loss += loss
    obs_loss = float(obs_loss)  # one host round trip for all the groups
    if not grid:
        return out, None, obs_loss
    out_codes = codes(out, grid)
    return s * (out_codes - z), out_codes, obs_loss


def gptq_groups(rows: Any, prep: Any, grid: Any, act_order: bool = True
                ) -> tuple[Any, Any, float]:
    """gptq_rows' quantization for layers of many small Hessian groups (depthwise
    convolutions: G groups of d <= BLOCK columns, one block each): the same column steps,
    each on every group at once instead of one gptq call per group (the Python loop over
    G groups was most of such a layer's time). Returns as gptq_rows."""
    xp = array_module(rows, prep.Hinv)
    G, d, _ = prep.Hinv.shape
    R = rows.shape[0]
    r = R // G
    s, z = grid.columns()  # [R, d]
    perm = (xp.argsort(-xp.diagonal(prep.H, axis1=1, axis2=2), axis=1, kind="stable")
            if act_order else xp.broadcast_to(xp.arange(d), (G, d)))  # [G, d]
    g = xp.arange(G)[:, None, None]
    U = xp.swapaxes(cholesky(prep.Hinv[g, perm[:, :, None], perm[:, None, :]]), 1, 2)
    W, S, Z = (xp.take_along_axis(a.reshape(G, r, d), perm[:, None, :], axis=2)
               for a in (rows.astype(xp.float64), s, z))  # [G, r, d] in processing order
    Q = xp.zeros_like(W)
    loss = 0.0
    for i in range(d):
        w = W[:, :, i]  # [G, r]
        t = quantize(w, S[:, :, i], Z[:, :, i], grid.qmin, grid.qmax)
        Q[:, :, i] = t
        err = (w - t) / U[:, i, i][:, None]  # [G, r]
        loss += (err * err).sum()
        W[:, :, i:] -= err[:, :, None] * U[:, None, i, i:]
    out = xp.take_along_axis(Q, xp.argsort(perm, axis=1)[:, None, :], axis=2).reshape(R, d)
    out_codes = codes(out, grid)
    return s * (out_codes - z), out_codes, float(loss)


@register_solver(Unstructured, "gptq")
@register_solver(NM, "gptq")
def gptq_solver(task: Task) -> LayerSolution:
    """The whole layer in one pass per Hessian group: SparseGPT pruning at the structure's
    sparsity (or N:M, each group decided when it comes up) and / or GPTQ on a grid fitted to
    the dense weights, jointly; with QuantSpec.refine=True (off by default: reference GPTQ)
    the codes then go through the H-aware code descent (refine.py), pruned weights kept
    at 0."""
    W, H64, quant, st = task.W, task.H, task.quant, task.structure
    G, r, d = W.shape
    xp = array_module(W, H64)
    nm = (st.n, st.m, xp.argsort(xp.asarray(st.groups(d)), kind="stable")) if isinstance(
        st, NM) else None  # the columns group by group
    act_order = task.act_order and nm is None
    inverse = G > 1 and d <= BLOCK  # H^-1 for the depthwise groups at once; else U from H
    prep = prepare(W, H64, task.damp, inverse=inverse, factor=not inverse)
    rows = prep.W.reshape(G * r, d)  # [R, d] float32
    grid = fit_grid(rows, quant) if quant else None  # on the dense weights, fixed
    out, out_codes, obs_loss = gptq_rows(rows, prep, grid, st.sparsity or 0.0, act_order, nm)
    W_hat = out.reshape(G, r, d)
    used = "gptq+act-order" if act_order else "gptq"
    if wanted(quant, exact=False):
        pinned = (W_hat == 0) if st.sparsity else None  # pruned (and 0-coded)
        W_hat, out_codes, used, obs_loss, _ = descend(W, H64, grid, out_codes.reshape(G, r, d),
                                                      W_hat, used, obs_loss, pinned)
    b = task.baseline
    return LayerSolution(
        W=W_hat, baseline=b.W, loss=layer_loss(W, W_hat, H64), baseline_loss=b.loss,
        obs_loss=obs_loss, zeros=count_zeros(W_hat), dead=prep.dead, damp=prep.damp,
        escalations=prep.escalations, grid=grid,
        codes=None if out_codes is None else out_codes.reshape(G, r, d),
        baseline_codes=b.codes, baseline_grid=b.grid,
        method_used=used)
