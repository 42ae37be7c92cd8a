"""The calibration's token mask: positions of padded sequences that the model computes but
that carry no token.

A text model fed fixed-length sequences (a BERT's input_ids padded to 64, with an
attention_mask of 1 on the tokens and 0 on the padding) computes every position, padding
included; its outputs read only the tokens (mean pooling under the mask, a CLS token, a
per-token head scored on the tokens). all-MiniLM-L6-v2's calibration sentences are 56%
padding: the layers' Hessians and the activation ranges were mostly positions whose hidden
states no output reads. With the mask, the capture keeps only the token positions of each
sequence-shaped tensor ([batch, tokens, ...] with the mask's [batch, tokens], sequence-first
[tokens, batch, ...], or [batch * tokens, ...] for a layer that flattens them) in the
Hessians, the activation ranges and the smoothing statistics; the correction measures its
channels-last means there (correct.py, corrstats.py), and the verification, the DP's
`--score output` and the channel stage's output probes score outputs so laid out on the
tokens (verify.py, allocation/score.py, channels/sensitivity.py). Measured: README "Padded sequences" under "Calibration
data".

`--token-mask auto` (default): a graph input whose name contains "attention_mask" or
"input_mask", of rank 2, whose calibration values are 0 and 1; NAME: that input (checked,
a clear error where it is not one); none: every position counts (as before)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx

from ..errors import ConfigError
from .layout import input_specs

AUTO = ("attention_mask", "input_mask")  # substrings of the input names taken as masks
PROBE = 32  # samples read to check the mask's values and to state its padding share


def find(proto: onnx.ModelProto, data: Any, option: str) -> dict[str, Any] | None:
    """{"input", "padding" (share of the positions set to 0 in the first PROBE samples),
    "summary"} for the mask input `option` names ("auto", "none" or an input's name), or
    None. ConfigError where a named input is not a mask."""
    if option == "none" or data is None or data.n == 0:
        return None
    specs = {s.name: s for s in input_specs(proto)}
    if option != "auto" and option not in specs:
        raise ConfigError(f"--token-mask {option!r}: the model has no input of that name (its "
                          f"inputs: {', '.join(specs) or 'none'}); use auto or none")
    names = [option] if option != "auto" else [
        n for n in specs if any(k in n.lower() for k in AUTO)]
    for name in names:
        why = _not_mask(specs[name].shape, data, name)
        if why is None:
            keep = _first(data, name) != 0
            pad = 1.0 - float(keep.mean())
            return {"input": name, "padding": round(pad, 4), "summary": (
                f"token mask: input {name!r} marks {pad:.0%} of the calibration positions as "
                f"padding (first {min(data.n, PROBE)} samples); the Hessians, activation "
                "ranges, smoothing statistics, correction means and per-token outputs' "
                "fidelity leave them out (--token-mask none keeps them)")}
        if option != "auto":
            raise ConfigError(f"--token-mask {name!r}: {why}; use --token-mask none")
    return None


def _first(data: Any, name: str) -> np.ndarray:
    return np.asarray(next(iter(data.batches(min(data.n, PROBE))))[1][name])


def _not_mask(dims: tuple, data: Any, name: str) -> str | None:
    """Why input `name` is no token mask ([batch, tokens] of 0 and 1), or None."""
    if len(dims) != 2:
        return f"input {name!r} has rank {len(dims)}, a token mask has rank 2 [batch, tokens]"
    v = _first(data, name)
    if v.ndim != 2 or not np.isin(v, (0, 1)).all():
        return f"the calibration values of input {name!r} are not all 0 or 1"
    return None


def select(acts: dict[str, Any], mask: str | None, names: Iterable[str],
           flat: Iterable[str] = ()) -> dict[str, Any]:
    """`acts` (one run's tensors, the feed included) with each tensor of `names` cut to the
    positions its mask input keeps (positions(); `flat`: 2-D layer inputs, [batch * tokens,
    ...]); `acts` itself without the mask."""
    if mask is None or mask not in acts:
        return acts
    keep = np.asarray(acts[mask]) != 0
    if keep.ndim != 2 or keep.all() or not keep.any():
        return acts
    flat = set(flat)
    return {**acts, **{n: positions(acts[n], keep, n in flat) for n in names
                       if n != mask and n in acts}}


def positions(y: Any, keep: np.ndarray | None, flat: bool = False) -> Any:
    """y at the token positions of `keep` ([batch, tokens] booleans) where its leading axes
    are keep's: [1, n, ...] (or its transpose's, [tokens, batch, ...]: a sequence-first
    transformer, nn.Transformer's default layout); with `flat` also where its first axis
    holds batch * tokens ([n, ...]); y itself otherwise, and where keep marks every position
    or none (a run of padding only is left whole: no empty tensors downstream)."""
    if keep is None or keep.ndim != 2 or keep.all() or not keep.any() or getattr(
            y, "ndim", 0) < 2:
        return y
    if y.ndim >= 3 and tuple(y.shape[:2]) == keep.shape:
        return y[keep][None]
    if y.ndim >= 3 and tuple(y.shape[:2]) == keep.shape[::-1]:  # square: taken as above
        return y[keep.T][None]
    if flat and y.ndim == 2 and y.shape[0] == keep.size:
        return y[keep.reshape(-1)]
    return y


def on_tokens(y: Any, feed: dict[str, Any], mask: str | None, axis: int = -1) -> Any:
    """y at the feed's token positions where its channels are last (`axis` -1: a MatMul /
    Gemm output, [batch, tokens, ..., C]); y itself otherwise (a Conv's [N, C, ...])."""
    if mask is None or axis != -1 or mask not in feed:
        return y
    return positions(y, np.asarray(feed[mask]) != 0)
