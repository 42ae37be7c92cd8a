"""ConvTranspose layers: which ones are compressed, their W view and their Hessian's inputs.

ConvTranspose(X [N, C, *S], W [C, M, *k]) (group 1) equals the Conv of W' [M, C, *k] =
W with its two channel axes swapped and its kernel flipped, at stride 1, over X with
s - 1 zeros between neighbours along each axis (s the stride), padded by (k - 1) dl - p
(dl the dilation, p the pad; output_padding added at the end). So one row of its W view
is one output channel, W [1, M, C * prod(k)] with the kernel flipped: row m, column
(c, j) is W[c, m, k - 1 - j], and the Hessian is X' X'^T over that Conv's columns (X' the
zero-filled input): the solvers, blocks along the input channels at one kernel position
and the blocked grids of whole kernels then hold as for a Conv. The capture does not
multiply the inserted zeros: each output phase fills its own block of H from its own taps'
columns (phase_columns; full_columns, the zero-filled Conv's, is the tests' oracle).

Grouped ConvTransposes are not compressed (a per-channel scale has one entry per output
channel of a group on the weight's axis 1, shared by the groups), nor ones given
`auto_pad` or `output_shape` (their padding is computed at run time): each gets its reason.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from .backend import array_module

OP = "ConvTranspose"


def refusal(attrs: dict[str, Any]) -> str:
    """Why a ConvTranspose with these attributes is not compressed ("" when it is)."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if int(attrs.get("group", 1)) != 1:
        return (f"grouped ConvTranspose (group={attrs['group']}): its per-channel scales would"
                " be shared by the groups")
    if auto not in ("NOTSET", "VALID"):
        return f"ConvTranspose with auto_pad={auto} (padding computed at run time)"
    if attrs.get("output_shape"):
        return "ConvTranspose with output_shape (padding computed at run time)"
    return ""


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(G, r, d) of the W view of a weight [C, M, *k]."""
    return 1, shape[1], shape[0] * math.prod(shape[2:])


def to_matrix(w: np.ndarray) -> np.ndarray:
    """W [C, M, *k] -> [1, M, C * prod(k)], the kernel flipped (module docstring)."""
    C, M = w.shape[:2]
    flipped = np.flip(w, axis=tuple(range(2, w.ndim)))
    return np.ascontiguousarray(np.swapaxes(flipped.reshape(C, M, -1), 0, 1)).reshape(1, M, -1)


def from_matrix(m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of to_matrix: [1, M, C * prod(k)] -> W [C, M, *k]."""
    C, M = shape[:2]
    w = np.swapaxes(np.asarray(m).reshape(M, C, -1), 0, 1).reshape(shape)
    return np.ascontiguousarray(np.flip(w, axis=tuple(range(2, len(shape)))))


def as_conv(use: Any, x: Any) -> tuple[Any, Any]:
    """(the equivalent Conv's Use, its input): x [N, C, *S] with stride - 1 zeros between
    neighbours, cropped where a pad exceeds the kernel's reach; the Use at stride 1 with
    the padding (k - 1) dl - p (+ output_padding at the end)."""
    nd = len(use.kernel)
    reach = [(k - 1) * dl for k, dl in zip(use.kernel, use.dilations)]
    begins = [r - p for r, p in zip(reach, use.pads[:nd])]
    ends = [r - p + o for r, p, o in zip(reach, use.pads[nd:], use.output_padding or (0,) * nd)]
    N, C, *S = x.shape
    filled = [(n - 1) * s + 1 if n else 0 for n, s in zip(S, use.strides)]
    z = x
    if any(s > 1 for s in use.strides):
        z = array_module(x).zeros((N, C, *filled), dtype=x.dtype)
        z[(slice(None), slice(None), *(slice(None, None, s) for s in use.strides))] = x
    crop = tuple(slice(max(0, -b), (f - max(0, -e)) if f else None)
                 for b, e, f in zip(begins, ends, filled))
    z = z[(slice(None), slice(None), *crop)]
    pads = tuple(max(0, b) for b in begins) + tuple(max(0, e) for e in ends)
    conv = dataclasses.replace(use, op="Conv", strides=(1,) * nd, pads=pads,
                               auto_pad="NOTSET", output_padding=())
    return conv, z


def full_columns(use: Any, act: Any, budget_bytes: int, dtype: Any = None) -> Iterator[Any]:
    """X [1, d, n] chunks of the equivalent Conv's columns (as_conv, chunk by chunk), each
    within budget_bytes as float64: the whole W view's rows, the inserted zeros' products
    included (phase_columns skips them; this is the oracle the tests hold it to)."""
    from .hessian import conv_columns

    conv, one = as_conv(use, act[:1])
    d = act.shape[1] * math.prod(use.kernel)
    chunk = max(1, budget_bytes // (16 * d * max(1, math.prod(one.shape[2:]))))
    for n0 in range(0, act.shape[0], chunk):
        yield conv_columns(conv, as_conv(use, act[n0:n0 + chunk])[1], dtype=dtype)


def phase_columns(use: Any, act: Any, budget_bytes: int, dtype: Any = None
                  ) -> Iterator[tuple[Any, Any]]:
    """(rows, X [1, len(rows), n]) per output phase and chunk of samples: the outputs at
    o = r (mod s) on every axis read only the kernel taps j with r + p - j dl = 0 (mod s),
    input q + c_j for the q-th of them (c_j = (r + p - j dl) / s): a stride-1 Conv of those
    taps over x itself (dilation dl / gcd(s, dl), padded by -min c_j), whose columns
    hessian.conv_columns makes. So X X^T of a phase fills only the block of H on those
    taps' columns (of every channel), and H is the sum of the phases' blocks: s^prod fewer
    columns times s^prod fewer rows than full_columns. `rows` index the W view's columns
    (c * prod(k) + the flipped tap), on the activations' device."""
    from .hessian import conv_columns

    xp = array_module(act)
    N, C, *S = act.shape
    nd, K = len(use.kernel), math.prod(use.kernel)
    out = [(n - 1) * s + o + (k - 1) * dl + 1 - b - e for n, s, o, k, dl, b, e in zip(
        S, use.strides, use.output_padding or (0,) * nd, use.kernel, use.dilations,
        use.pads[:nd], use.pads[nd:])]
    axes = []  # per axis: per phase with taps and outputs, (flipped taps, kernel, dil, pads)
    for n, s, k, dl, b, o in zip(S, use.strides, use.kernel, use.dilations, use.pads, out):
        phases = []
        for r in range(min(s, o)):
            taps = [j for j in range(k - 1, -1, -1) if (r + b - j * dl) % s == 0]  # c up
            if taps:
                lo, step = (r + b - taps[0] * dl) // s, dl // math.gcd(s, dl)
                q = len(range(r, o, s))
                phases.append(([k - 1 - j for j in taps], len(taps), step,
                               (-lo, q - n + lo + (len(taps) - 1) * step)))
        axes.append(phases)
    per_sample = 16 * C * K * max(1, math.prod(S))  # every input position once per tap
    chunk = max(1, budget_bytes // per_sample)
    for combo in itertools.product(*axes):
        sub = dataclasses.replace(
            use, op="Conv", kernel=tuple(p[1] for p in combo), strides=(1,) * nd,
            dilations=tuple(p[2] for p in combo), auto_pad="NOTSET", group=1,
            output_padding=(), pads=tuple(p[3][0] for p in combo) + tuple(p[3][1] for p in combo))
        taps = np.ravel_multi_index(np.meshgrid(*(p[0] for p in combo), indexing="ij"),
                                    use.kernel).reshape(-1)
        rows = xp.asarray((np.arange(C)[:, None] * K + taps[None, :]).reshape(-1))  # once
        for n0 in range(0, N, chunk):
            yield rows, conv_columns(sub, act[n0:n0 + chunk], dtype=dtype or xp.float64)

def into(total: Any, P: Any, rows: Any) -> None:
    """total [G, d, d] += P, or only on the block of `rows` (P [G, len(rows), len(rows)])."""
    if rows is None:
        total += P
    else:
        ix = array_module(total).asarray(rows)
        total[:, ix[:, None], ix[None, :]] += P

