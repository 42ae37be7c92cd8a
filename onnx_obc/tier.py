"""Which Hessian each layer keeps, decided from the run's settings (the 8-bit tier): its
precision per batch (hessian_dtype), whether it comes from a subgrid of the output positions
(subsampled) and which layers keep only its diagonal (diagonal_hessians). collect.py
builds what these say."""

from __future__ import annotations

from typing import Any

from .hessian import SUBSAMPLE_COLUMNS
from .layers import Layer


def hessian_dtype(cfg: Any, xp: Any) -> Any:
    """float32 for runs where no layer takes ExactOBS / OBQ (8-bit quantization alone,
    costplan.exact_applies): GPTQ and RTN at 8 bits do not see float32's rounding of each
    batch's X X^T (summed in float64), and the capture's im2col and GEMM take half the time;
    float64 otherwise."""
    from .costplan import exact_applies

    return xp.float64 if exact_applies(cfg) else xp.float32


def subsampled(cfg: Any) -> bool:
    """Whether the Hessians come from a subgrid of the output positions: in the runs of
    hessian_dtype's float32 (8-bit quantization alone), where GPTQ and RTN need H only to
    about a percent; see docs/conversion-time.md for the measured trade."""
    from .costplan import exact_applies

    return not exact_applies(cfg)


EXACT_COLUMNS = 256  # exact runs: a subgrid only where it keeps this many columns per input


def column_floor(cfg: Any) -> int:
    """Columns per input (x d) a layer's subgrid of output positions must keep
    (hessian.position_step; 0: every position): SUBSAMPLE_COLUMNS in the 8-bit runs of
    subsampled(), EXACT_COLUMNS where ExactOBS / OBQ / DP read H (solver.positions "all":
    0). Basic Pitch's CQT stack (a 936-input conv over 45,000 positions a clip, a 256-tap
    lowpass over 44,000) gave a 50% run's capture 61.7 s of 70.5 with every position, 13.2
    with this floor, the same output error on held-out clips (docs/scale.md "Hessians from a
    subgrid of the positions")."""
    if cfg.solver.positions == "all":
        return 0
    return SUBSAMPLE_COLUMNS if subsampled(cfg) else EXACT_COLUMNS


def channel_floor(cfg: Any) -> int:
    """column_floor for the channel stage's consumer Hessians, whose group OBS reads H as
    ExactOBS does: EXACT_COLUMNS (0 with solver.positions "all"). With every position,
    DNSMOS's --channels 0.2 spent 598 of its 684 s in that stage's capture, two shared
    cores (docs/scale.md "Hessians from a subgrid of the positions")."""
    return 0 if cfg.solver.positions == "all" else EXACT_COLUMNS


W8_FULL_FLOPS = 1e9  # "auto": the full H where d^2 (r + d) is at most this (GPTQ's order)


def diagonal_hessians(cfg: Any, layers: list[Layer]) -> frozenset[str]:
    """The 8-bit tier, decided here only: the layers (weights) that keep diag(H) instead
    of H, in the runs of subsampled() with the default method (not sequential: its fit
    needs the cross moments); solver.w8_hessian "diag": all of them, "full": none, "auto":
    those whose GPTQ cost d^2 (r + d) per group exceeds W8_FULL_FLOPS (the Hessian's
    product grows with d^2 too), the small layers keeping H and GPTQ. Their solve is RTN on
    the grid searched under diag(H) (solvers/layer.py). Measured (docs/conversion-time.md):
    "diag" everywhere raised ocr_like's W8A8 error 0.016 -> 0.023 and cost common 2
    points of text accuracy; "auto" (2 of ocr_like's 24 layers, 1 of common's 22 diagonal)
    kept both within 0.001 / 0 points for 0.7x the CPU seconds."""
    mode = cfg.solver.w8_hessian
    if not subsampled(cfg) or cfg.solver.method != "obc" or cfg.run.sequential or (
            mode == "full"):
        return frozenset()
    return frozenset(L.weight for L in layers if mode == "diag" or (
        L.matrix_shape[2] ** 2 * (L.matrix_shape[1] + L.matrix_shape[2]) > W8_FULL_FLOPS))
