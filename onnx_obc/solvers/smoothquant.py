"""SmoothQuant's per-channel scales (Xiao et al., ICML 2023) and, per layer input, the choice
of its migration strength by the layers' output error with 8-bit weights and activations on
a sample of the input's rows. Pure array math (NumPy or CuPy from the arrays).

Notation: X [n, d] rows of the input, W [r, d] a layer reading it (y = X W^T), s [d]:
X W^T = (X / s)(W s)^T exactly; the activation grid then covers X / s, the weights' per-row
grids W s.

    s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha)

alpha 1 moves every channel's range into the weights (each X_j / s_j peaks at 1), 0.5 splits
it. Which is best depends on the input and its weights: one strength on every input of
all-MiniLM-L6-v2, alpha 1 gave the lowest W8A8 output error of {0.5, 0.75, 0.9, 1}; on the
tests' LayerNorm block alpha 1 on its ReLU -> MatMul input raised the model's error (0.0247
-> 0.0276) where 0.5 lowered it, and on the shipped digits_cnn's classifier input 0.75 raised
it (0.0062 -> 0.0068). So each input takes the candidate (or none) of lowest estimated
error."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backend import array_module as xp_of

ALPHAS = (0.5, 0.75, 1.0)
FLOOR = 1e-2  # scales at least FLOOR x the largest: a channel (nearly) dead on the
# calibration samples is not blown up by 1 / its maximum (unseen inputs would clip)
CLIPS = (1.0, 0.8, 0.6, 0.45, 0.3, 0.2)  # the activation grid's clip search, fractions of max
MARGIN = 0.5  # a strength is taken only where its error is under MARGIN x no smoothing's:
# each smoothed input costs one float Mul at run time (1-3% of the latency on the real
# bench models, 14% on the shipped 60-us digits_vit), and small estimated gains did not
# show (MARGIN 0.98: digits_cnn's classifier input at 0.83x its estimate, the model's
# held-out error 0.0062 -> 0.0068; PP-LCNet's 0.0244 -> 0.0242; docs/deployment.md "Smoothing ...")
OUT_ROWS = 512  # a layer's output rows the estimate computes (_rows)
NEAR = 1.1  # of the strengths within NEAR x the lowest error, the largest is taken: the
# estimate rounds the weights to nearest, while the run's GPTQ / OBQ compensates their
# error, so it overstates what a larger alpha costs the weights (all-MiniLM-L6-v2's W8A8
# held-out error: 0.0754 with the plain lowest, 0.0664 with alpha 1 everywhere)


def scales(amax, wmax, alpha: float):
    """s [d] (float64) from the input's per-channel maxima `amax` [d] and the weights'
    per-input-column maxima `wmax` [d]; all ones where the input is dead."""
    xp = xp_of(amax)
    a, w = amax.astype(xp.float64), wmax.astype(xp.float64)
    if float(a.max()) <= 0:
        return xp.ones_like(a)
    a = xp.maximum(a, FLOOR * a.max())
    w = xp.maximum(w, FLOOR * w.max()) if float(w.max()) > 0 else xp.ones_like(w)
    return a ** alpha / w ** (1.0 - alpha)


def fake_activations(X, fit=None, bits: int = 8):
    """X [n, d] on one symmetric per-tensor grid, its clip the best of CLIPS for the squared
    error on `fit` (default X; the run's own ranges are searched likewise, actrange.py)."""
    xp = xp_of(X)
    fit = X if fit is None else fit
    top = float(xp.abs(fit).max())
    if top == 0:
        return X
    q = 2 ** (bits - 1) - 1

    def grid(c: float, Z):
        step = c * top / q
        return xp.clip(xp.rint(Z / step), -q, q) * step
    c = min(CLIPS, key=lambda c: float(((grid(c, fit) - fit) ** 2).sum()))
    return grid(c, X)


def fake_weights(W, qmax: int = 127):
    """W [r, d] rounded to nearest on symmetric per-row min-max grids, codes in
    [-qmax, qmax] (127: 8 bits; 63: 8 bits in 7 bits' range, quant.QuantSpec.reduced)."""
    xp = xp_of(W)
    q = qmax
    step = xp.abs(W).max(axis=1, keepdims=True) / q
    step = xp.where(step > 0, step, 1.0)
    return xp.clip(xp.rint(W / step), -q, q) * step


def output_error(X, Ws: list, s, fit=None, Ys: list | None = None, qmax: int = 127
                 ) -> float:
    """sum over the layers of ||X W^T - Qa(X / s) Qw(W s)^T||^2 / ||X W^T||^2, the
    activation grid fitted on the rows `fit` (default X); `Ys`: the X W^T, if known; Qw's
    codes in [-qmax, qmax] (fake_weights)."""
    s = s.astype(X.dtype)
    Xq = fake_activations(X / s[None, :], None if fit is None else fit / s[None, :])
    total = 0.0
    for i, W in enumerate(Ws):
        Y = X @ W.T if Ys is None else Ys[i]  # [n, r]
        den = float((Y ** 2).sum(dtype=float))
        if den > 0:
            E = Y - Xq @ fake_weights(W * s[None, :], qmax).T
            total += float((E ** 2).sum(dtype=float)) / den
    return total


@dataclass(frozen=True)
class Choice:
    alpha: float | None  # None: not smoothed
    errors: dict[str, float] = field(default_factory=dict)  # "off" / str(alpha) -> error


def _rows(W):
    """At most OUT_ROWS of W's rows, an even spread: the output error is a sum over rows,
    each row's weight grid its own, so a spread of them estimates it at a fraction of the
    cost (ddddocr's 8210 x 1024 classifier: ~3 s of estimates at every row)."""
    r = W.shape[0]
    return W if r <= OUT_ROWS else W[(xp_of(W).arange(OUT_ROWS) * r) // OUT_ROWS]


def choose(halves: list, Ws: list, alphas: tuple[float, ...] = ALPHAS, qmax: int = 127
           ) -> Choice:
    """The strength of lowest output error for the layers Ws (each [r, d]) reading the
    input, or None where none is MARGIN below no smoothing's. `halves`: [(X [n, d], amax
    [d])] per half of the calibration samples (rows and per-channel maxima): with two, each
    half's scales and activation grid are tried on the other's rows (the maxima of a few
    samples overfit: alpha 1 leaves every channel at its own calibration maximum, no
    headroom), the mean of both ways; with one, in-sample."""
    xp = xp_of(halves[0][0])
    wmax = xp.max(xp.stack([xp.abs(W).max(axis=0) for W in Ws]), axis=0)  # every row's
    Ws = [_rows(W).astype(xp.float32) for W in Ws]
    halves = [(X.astype(xp.float32), a, [X.astype(xp.float32) @ W.T for W in Ws])
              for X, a in halves]
    pairs = [(halves[0], halves[1]), (halves[1], halves[0])] if len(halves) == 2 else [
        (halves[0], halves[0])]

    def error(alpha: float | None) -> float:  # each fold: one half's scales, the other's rows
        return sum(output_error(test[0], Ws, xp.ones(test[0].shape[1]) if alpha is None else
                                scales(fit[1], wmax, alpha), fit[0], test[2], qmax)
                   for fit, test in pairs) / len(pairs)
    errors = {"off": error(None), **{f"{a:g}": error(a) for a in alphas}}
    low = min(errors[f"{a:g}"] for a in alphas)
    best = max(a for a in alphas if errors[f"{a:g}"] <= NEAR * low)
    keep = errors[f"{best:g}"] < MARGIN * errors["off"]
    return Choice(best if keep else None, errors)
