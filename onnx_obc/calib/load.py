"""Calibration and evaluation data: load, check against the model, batch.

Accepted sources: a `.npz` (keys = model input names, axis 0 = samples); a directory of
`.npz`/`.npy` files, one sample each (sorted by name; `.npy` only for single-input models);
any iterable of feed dicts (e.g. onnxruntime's CalibrationDataReader, whose `get_next()`
is also supported), each with a leading batch axis; or None, which synthesizes inputs
from the model's input spec and marks the run as not representative.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import onnx

from ..errors import CalibrationError
from .arrays import DataSet, InputSpec, input_specs
from .stream import StreamSource, reopenable

log = logging.getLogger(__name__)
LABELS = "labels"


def load_data(source: Any, model: onnx.ModelProto, *, limit: int | None = None,
              allow_labels: bool = True) -> DataSet | StreamSource:
    """A calibration / eval source from any accepted input, checked against the model.

    Files and directories are read into an array source (DataSet). A re-iterable of feed
    dicts, or a CalibrationDataReader with rewind(), becomes a StreamSource read one item at
    a time on every pass; this first pass checks every item and counts the samples. A
    one-shot iterator cannot be read twice, so it is read into memory."""
    specs = input_specs(model)
    if not isinstance(source, (str, os.PathLike)):
        again = reopenable(source)
        if again is not None:
            return _stream(again, specs, type(source).__name__, limit)
        arrays, labels, desc = _from_iterable(source), None, type(source).__name__
    else:
        path = os.fspath(source)
        if os.path.isdir(path):
            arrays, labels = _from_directory(path, specs), None
        elif os.path.isfile(path):
            arrays, labels = _from_file(path, specs)
        else:
            raise CalibrationError(f"calibration data {path!r} does not exist")
        desc = path
    if labels is not None and not allow_labels:
        labels = None
    ds = DataSet(_check(arrays, specs, desc), desc, labels=labels)
    if labels is not None and labels.shape[0] != ds.n:
        raise CalibrationError(f"{desc}: 'labels' has {labels.shape[0]} entries for {ds.n} samples")
    if limit is not None and limit < ds.n:
        ds = ds.take(np.arange(limit))
    return ds


def _stream(again: Any, specs: list[InputSpec], desc: str, limit: int | None) -> StreamSource:
    def check(item: Any, first: int) -> dict[str, np.ndarray]:
        if not isinstance(item, dict):
            raise CalibrationError(f"{desc}: the item at sample {first} is a "
                                   f"{type(item).__name__}, not a feed dict "
                                   "{input_name: array with a leading batch axis}")
        return _check({k: np.asarray(v) for k, v in item.items()}, specs,
                      f"{desc} (the item starting at sample {first})")

    src = StreamSource(open_pass=again, check=check, source=desc)
    n = sum(k for k, _ in src.batches(1 << 30))  # one pass: every item checked, n counted
    if not n:
        raise CalibrationError(f"calibration iterable {desc} yielded no samples; it must yield "
                               "dicts {input_name: array with a leading batch axis}")
    return src.head(n if limit is None else min(n, limit))


MAGIC = (b"\x93NUMPY", b"PK\x03\x04", b"PK\x05\x06")  # .npy; .npz (a zip, or an empty one)
FORMATS = ("a .npz with one array per model input (numpy.savez(path, **{input_name: array}), "
           "axis 0 = samples), a .npy for a single-input model, or a directory of them")


def _from_file(path: str, specs: list[InputSpec]) -> tuple[dict[str, np.ndarray], Any]:
    try:
        with open(path, "rb") as f:  # our handle: closed even when numpy fails mid-read
            if not (head := f.read(6)).startswith(MAGIC):
                raise CalibrationError(f"cannot read calibration data {path!r}: not an "
                                       f".npz/.npy file (it starts with {head!r}); give {FORMATS}")
            f.seek(0)
            data = np.load(f, allow_pickle=False)
            if isinstance(data, np.ndarray):
                arrays = {"": data}
            else:
                arrays = {k: data[k] for k in data.files}
    except CalibrationError:
        raise
    except Exception as exc:
        raise CalibrationError(
            f"cannot read calibration data {path!r} ({exc}). Save it with "
            "numpy.savez(path, **{input_name: array}) with axis 0 = samples, numeric arrays only."
        ) from None
    if "" in arrays:
        if len(specs) != 1:
            raise CalibrationError(f"{path!r} is a single array but the model has "
                                   f"{len(specs)} inputs; use a .npz keyed by input name")
        return {specs[0].name: arrays[""]}, None
    labels = arrays.pop(LABELS, None)
    return arrays, labels


def _from_directory(path: str, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    files = sorted(f for f in os.listdir(path) if f.endswith((".npz", ".npy")))
    if not files:
        raise CalibrationError(f"directory {path!r} has no .npz or .npy files (one sample each)")
    samples = []
    for f in files:
        arrays, _ = _from_file(os.path.join(path, f), specs)
        samples.append({k: _add_sample_axis(v, k, specs) for k, v in arrays.items()})
    return _concat(samples, path)


def _add_sample_axis(a: np.ndarray, name: str, specs: list[InputSpec]) -> np.ndarray:
    spec = next((s for s in specs if s.name == name), None)
    if spec is not None and a.ndim == len(spec.shape) - 1:
        return a[None]
    return a


def _from_iterable(source: Any) -> dict[str, np.ndarray]:
    if hasattr(source, "get_next"):  # onnxruntime CalibrationDataReader protocol
        source = iter(source.get_next, None)
    try:
        items = list(source)
    except TypeError:
        raise CalibrationError(
            f"calibration data of type {type(source).__name__} is not a path, an iterable of "
            "feed dicts, or a CalibrationDataReader"
        ) from None
    if not items or not all(isinstance(i, dict) for i in items):
        raise CalibrationError("calibration iterable must yield at least one dict "
                               "{input_name: array with a leading batch axis}")
    return _concat([{k: np.asarray(v) for k, v in i.items()} for i in items], "iterable")


def _concat(samples: list[dict[str, np.ndarray]], desc: str) -> dict[str, np.ndarray]:
    keys = set(samples[0])
    for i, s in enumerate(samples):
        if set(s) != keys:
            raise CalibrationError(f"{desc}: item {i} has keys {sorted(s)}, the first has "
                                   f"{sorted(keys)}")
    try:
        return {k: np.concatenate([s[k] for s in samples], axis=0) for k in keys}
    except ValueError as exc:
        raise CalibrationError(f"{desc}: samples have different shapes ({exc})") from None


def _check(arrays: dict[str, np.ndarray], specs: list[InputSpec], desc: str) -> dict:
    names = [s.name for s in specs]
    extra = sorted(set(arrays) - set(names))
    missing = [n for n in names if n not in arrays]
    if missing or extra:
        raise CalibrationError(
            f"{desc}: the model's inputs are {names} but the data has {sorted(arrays)} "
            f"(missing {missing}, unexpected {extra}). Name each array after the model input "
            "it feeds (plus optional 'labels' for evaluation)."
        )
    out, n = {}, None
    for s in specs:
        a = arrays[s.name]
        if a.ndim != len(s.shape):
            hint = " Add a sample axis (a[None])." if a.ndim == len(s.shape) - 1 else ""
            raise CalibrationError(f"{desc}: input {s.name!r} has shape {a.shape} but the model "
                                   f"expects rank {len(s.shape)} {_fmt(s.shape)}.{hint}")
        for ax, (got, want) in enumerate(zip(a.shape, s.shape)):
            if ax > 0 and isinstance(want, int) and want > 0 and got != want:
                raise CalibrationError(f"{desc}: input {s.name!r} has shape {a.shape}; the model "
                                       f"expects {_fmt(s.shape)} (axis {ax} must be {want})")
        a = _cast(a, s, desc)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise CalibrationError(_not_finite(a, s.name, desc))
        if n is not None and a.shape[0] != n:
            raise CalibrationError(f"{desc}: inputs have different sample counts "
                                   f"({n} vs {a.shape[0]} for {s.name!r})")
        n = a.shape[0]
        out[s.name] = a
    if not n:
        raise CalibrationError(f"{desc}: no samples")
    return out


def _not_finite(a: np.ndarray, name: str, desc: str) -> str:
    """Which samples (axis 0) of input `name` hold NaN or inf."""
    bad = np.flatnonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1))
    shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
    return (f"{desc}: input {name!r} contains NaN or inf in sample(s) {shown} ({len(bad)} of "
            f"{a.shape[0]}, counting from 0); drop or fix those samples (numpy.isfinite)")


def _cast(a: np.ndarray, s: InputSpec, desc: str) -> np.ndarray:
    if a.dtype == s.dtype:
        return a
    if a.dtype.kind == s.dtype.kind or (a.dtype.kind in "iu" and s.dtype.kind in "iu"):
        log.info("%s: casting input %r from %s to the model's %s", desc, s.name, a.dtype, s.dtype)
        return a.astype(s.dtype)
    raise CalibrationError(f"{desc}: input {s.name!r} is {a.dtype} but the model expects "
                           f"{s.dtype}; convert it (array.astype(np.{s.dtype}))")


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join(str(d) if d else "?" for d in shape) + "]"
