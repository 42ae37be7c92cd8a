"""Where each model input keeps its samples, read from the model's symbolic dimensions, and
the checks of one item of data (a feed dict holding some samples) against the model.

The sample axis of an input is (first rule that applies):
    an override (`--calib-sample-axis x=1,h=none`);
    none, when all its dimensions are fixed and another input has a symbolic one: the
        input (an LSTM state, a sample-rate scalar) is fed whole to every run;
    the axis whose symbolic name reads as a batch (N, batch, batch_size, ...);
    axis 0, when it is symbolic or fixed at 1 (a fixed batch of one: [1, 3, H, W]);
    the first symbolic axis ([d, N]); axis 0 in a model without symbolic dimensions.
Its other symbolic axes may differ between samples (image sizes, sequence lengths): samples
are batched by shape, every batch one shape, which keeps the Hessians (sums over positions)
exact. Fixed axes must match the model.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..errors import CalibrationError

log = logging.getLogger(__name__)
Feed = dict[str, np.ndarray]
BATCH_NAME = re.compile(r"(?i)^(n|b|bs|batch|batch_?size|.*_batch|batch_.*)$")
CHECK_CHUNK = 1 << 24  # elements checked for NaN/inf at a time (bounded temporaries)


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # int = fixed, str/None = symbolic


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tt.shape.dim
        )
        specs.append(InputSpec(vi.name, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)),
                               dims))
    return specs


def fixed(d: object) -> bool:
    return isinstance(d, int) and d > 0


def parse_axes(text: str | None) -> dict[str, int | None]:
    """'x=1,h=none' -> {'x': 1, 'h': None}; raises ValueError on a bad entry."""
    out: dict[str, int | None] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, sep, value = part.rpartition("=")
        if not sep or not name or not (value.lower() == "none" or value.isdigit()):
            raise ValueError(f"bad sample-axis entry {part!r}: give INPUT=AXIS or INPUT=none")
        out[name] = None if value.lower() == "none" else int(value)
    return out


@dataclass(frozen=True)
class Layout:
    """The model's inputs and the sample axis of each (None: fed whole to every run)."""

    specs: tuple[InputSpec, ...]
    axis: dict[str, int | None]

    @classmethod
    def of(cls, specs: list[InputSpec], overrides: dict[str, int | None] | None = None
           ) -> Layout:
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - {s.name for s in specs})
        if unknown:
            raise CalibrationError(f"sample axis given for {unknown}, which are not inputs of "
                                   f"the model ({[s.name for s in specs]})")
        any_symbolic = any(not fixed(d) for s in specs for d in s.shape)
        axis = {}
        for s in specs:
            ax = overrides[s.name] if s.name in overrides else _guess(s, any_symbolic)
            if ax is not None and not 0 <= ax < len(s.shape):
                raise CalibrationError(f"input {s.name!r} has rank {len(s.shape)}: sample "
                                       f"axis {ax} does not exist")
            axis[s.name] = ax
        if specs and all(a is None for a in axis.values()):
            raise CalibrationError("no model input has a sample axis; give one with "
                                   "--calib-sample-axis INPUT=AXIS")
        return cls(tuple(specs), axis)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def whole(self) -> list[str]:
        """Inputs without a sample axis, fed whole to every run."""
        return [n for n, a in self.axis.items() if a is None]

    def count(self, item: Feed) -> int:
        n = next(k for k, a in self.axis.items() if a is not None)
        return int(item[n].shape[self.axis[n]])

    def key(self, item: Feed) -> tuple:
        """What samples must share to be batched together: every per-sample input's shape
        without its sample axis, and the whole inputs themselves."""
        out = []
        for n, a in self.axis.items():
            v = item[n]
            if a is None:
                out.append((v.shape, v.dtype.str, v.tobytes()))
            else:
                out.append(v.shape[:a] + v.shape[a + 1:])
        return tuple(out)

    def cut(self, item: Feed, lo: int, hi: int) -> Feed:
        return {n: v if self.axis[n] is None else _slice(v, self.axis[n], lo, hi)
                for n, v in item.items()}

    def pick(self, item: Feed, idx: np.ndarray) -> Feed:
        return {n: v if self.axis[n] is None else np.take(v, idx, axis=self.axis[n])
                for n, v in item.items()}

    def concat(self, items: list[Feed]) -> Feed:
        if len(items) == 1:
            return items[0]
        return {n: items[0][n] if a is None else np.concatenate([i[n] for i in items], axis=a)
                for n, a in self.axis.items()}

    def batch_of(self, item: Feed, samples: int) -> dict[str, tuple[int, ...]]:
        """The shape of every input in a batch of `samples` samples shaped like `item`."""
        return {n: v.shape if self.axis[n] is None else
                v.shape[:self.axis[n]] + (samples,) + v.shape[self.axis[n] + 1:]
                for n, v in item.items()}

    def check(self, arrays: Feed, desc: str, add_axis: bool = False, lazy_cast: bool = False
              ) -> Feed:
        """`arrays` checked against the model (names, ranks, fixed dims, dtypes, finite
        values, one sample count) and cast to the model's dtypes. add_axis: a per-sample
        input one axis short (one sample saved without its sample axis) gets it. lazy_cast:
        memory-mapped arrays keep their dtype (checked; the batches are cast)."""
        names = self.names
        extra = sorted(set(arrays) - set(names))
        missing = [n for n in names if n not in arrays]
        if missing:
            raise CalibrationError(
                f"{desc}: the model's inputs are {names} but the data has {sorted(arrays)} "
                f"(missing {missing}, unexpected {extra}). Name each array after the model "
                "input it feeds (plus optional 'labels' for evaluation).")
        if extra:  # every input is there: side data (a test set's texts or boxes)
            log.warning("%s: %s name no model input (the inputs are %s); ignored", desc,
                        extra, names)
        out, n, first = {}, None, None
        for s in self.specs:
            a, ax = arrays[s.name], self.axis[s.name]
            if add_axis and ax is not None and a.ndim == len(s.shape) - 1:
                a = np.expand_dims(a, ax)
            _check_shape(a, s, ax, desc)
            a = _cast(a, s, desc, lazy_cast and isinstance(a, np.memmap))
            _check_finite(a, s.name, ax, desc)
            if ax is not None:
                if n is not None and a.shape[ax] != n:
                    raise CalibrationError(f"{desc}: inputs have different sample counts "
                                           f"({n} for {first!r} vs {a.shape[ax]} for "
                                           f"{s.name!r})")
                n, first = a.shape[ax], first or s.name
            out[s.name] = a
        if not n:
            raise CalibrationError(f"{desc}: no samples")
        return out


def _guess(s: InputSpec, any_symbolic: bool) -> int | None:
    if not s.shape or (any_symbolic and all(fixed(d) for d in s.shape)):
        return None
    named = [i for i, d in enumerate(s.shape) if isinstance(d, str) and BATCH_NAME.match(d)]
    if named:
        return named[0]
    if not fixed(s.shape[0]) or s.shape[0] == 1:
        return 0
    return next((i for i, d in enumerate(s.shape) if not fixed(d)), 0)


def _slice(v: np.ndarray, ax: int, lo: int, hi: int) -> np.ndarray:
    return v[(slice(None),) * ax + (slice(lo, hi),)]


def _check_shape(a: np.ndarray, s: InputSpec, ax: int | None, desc: str) -> None:
    if a.ndim != len(s.shape):
        hint = (" Add a sample axis (a[None])." if ax is not None and a.ndim == len(s.shape) - 1
                else "")
        raise CalibrationError(f"{desc}: input {s.name!r} has shape {a.shape} but the model "
                               f"expects rank {len(s.shape)} {fmt(s.shape)}.{hint}")
    for i, (got, want) in enumerate(zip(a.shape, s.shape)):
        if i != ax and fixed(want) and got != want:
            whole = (" (it has no sample axis: the same array is fed whole to every run)"
                     if ax is None else "")
            raise CalibrationError(f"{desc}: input {s.name!r} has shape {a.shape}; the model "
                                   f"expects {fmt(s.shape)} (axis {i} must be {want}){whole}")


def _check_finite(a: np.ndarray, name: str, ax: int | None, desc: str) -> None:
    if a.dtype.kind != "f":
        return
    m = np.moveaxis(a, ax, 0) if ax is not None else a[None]
    if not m.size:
        return
    rows = max(1, CHECK_CHUNK // max(1, m[0].size))
    for i in range(0, m.shape[0], rows):
        chunk = np.isfinite(m[i:i + rows].reshape(min(rows, m.shape[0] - i), -1)).all(axis=1)
        if not chunk.all():
            bad = np.flatnonzero(~np.isfinite(m.reshape(m.shape[0], -1)).all(axis=1))
            shown = ", ".join(str(j) for j in bad[:10]) + (", ..." if len(bad) > 10 else "")
            raise CalibrationError(
                f"{desc}: input {name!r} contains NaN or inf in sample(s) {shown} ({len(bad)} "
                f"of {m.shape[0]}, counting from 0); drop or fix those samples (numpy.isfinite)")


def _cast(a: np.ndarray, s: InputSpec, desc: str, lazy: bool = False) -> np.ndarray:
    if a.dtype == s.dtype:
        return a
    if a.dtype.kind == s.dtype.kind or (a.dtype.kind in "iu" and s.dtype.kind in "iu"):
        log.info("%s: casting input %r from %s to the model's %s", desc, s.name, a.dtype, s.dtype)
        return a if lazy else a.astype(s.dtype)
    raise CalibrationError(f"{desc}: input {s.name!r} is {a.dtype} but the model expects "
                           f"{s.dtype}; convert it (array.astype(np.{s.dtype}))")


def fmt(shape: tuple) -> str:
    return "[" + ", ".join(str(d) if d else "?" for d in shape) + "]"
