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
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .errors import CalibrationError

log = logging.getLogger(__name__)
LABELS = "labels"
SYNTHETIC_SAMPLES = 64


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # int = fixed, str/None = symbolic


@dataclass(frozen=True)
class DataSet:
    """Stacked samples: arrays[name] has axis 0 = samples."""

    arrays: dict[str, np.ndarray]
    source: str
    synthetic: bool = False
    labels: np.ndarray | None = None

    @property
    def n(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def take(self, idx: np.ndarray) -> DataSet:
        labels = None if self.labels is None else self.labels[idx]
        return DataSet({k: v[idx] for k, v in self.arrays.items()}, self.source,
                       self.synthetic, labels)

    def batches(self, batch_size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for i in range(0, self.n, batch_size):
            feed = {k: v[i:i + batch_size] for k, v in self.arrays.items()}
            yield next(iter(feed.values())).shape[0], feed

    def split(self, fraction: float, seed: int) -> tuple[DataSet, DataSet | None]:
        """(calibration part, held-out part or None when there are too few samples)."""
        h = min(int(round(self.n * fraction)), 256)
        if h < 1 or self.n - h < 1:
            return self, None
        perm = np.random.default_rng(seed).permutation(self.n)
        return self.take(np.sort(perm[h:])), self.take(np.sort(perm[:h]))


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


def load_data(source: Any, model: onnx.ModelProto, *, limit: int | None = None,
              allow_labels: bool = True) -> DataSet:
    """Load calibration/eval data from any accepted source and check it against the model."""
    specs = input_specs(model)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            arrays, labels = _from_directory(path, specs), None
        elif os.path.isfile(path):
            arrays, labels = _from_file(path, specs)
        else:
            raise CalibrationError(f"calibration data {path!r} does not exist")
        desc = path
    else:
        arrays, labels, desc = _from_iterable(source), None, type(source).__name__
    if labels is not None and not allow_labels:
        labels = None
    ds = DataSet(_check(arrays, specs, desc), desc, labels=labels)
    if labels is not None and labels.shape[0] != ds.n:
        raise CalibrationError(f"{desc}: 'labels' has {labels.shape[0]} entries for {ds.n} samples")
    if limit is not None and limit < ds.n:
        ds = ds.take(np.arange(limit))
    return ds


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


def count_samples(source: Any, model: onnx.ModelProto, limit: int | None = None) -> int | None:
    """Samples in a calibration path, from the .npy headers alone; None if not cheaply known."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path, ranks = os.fspath(source), {s.name: len(s.shape) for s in input_specs(model)}
    try:
        if os.path.isdir(path):  # one sample per file, unless the files keep a batch axis
            files = sorted(f for f in os.listdir(path) if f.endswith((".npz", ".npy")))
            single = next(iter(ranks), None)  # a .npy feeds the only input
            kept = [v[0] for k, v in _shapes(os.path.join(path, files[0])).items()
                    if v and len(v) == ranks.get(k or single)]
            n = len(files) * min(kept, default=1)
        else:
            n = min(v[0] for k, v in _shapes(path).items() if k != LABELS and v)
    except Exception:
        return None
    return n if limit is None else min(n, limit)


def _shapes(path: str) -> dict[str, tuple[int, ...]]:
    """{array name ("" for a .npy): shape}, read from the .npy headers only."""

    def shape(f: Any) -> tuple[int, ...]:
        fmt = np.lib.format
        v = fmt.read_magic(f)
        return (fmt.read_array_header_1_0 if v == (1, 0) else fmt.read_array_header_2_0)(f)[0]

    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            return {"": shape(f)}
    with zipfile.ZipFile(path) as z:
        return {n[:-4]: shape(z.open(n)) for n in z.namelist() if n.endswith(".npy")}


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


def synthesize(model: onnx.ModelProto, samples: int | None, seed: int) -> DataSet:
    """Random inputs from the model's input spec. NOT representative: results are only a
    smoke test. Refuses when a non-batch dimension is symbolic."""
    rng = np.random.default_rng(seed)
    n = samples or SYNTHETIC_SAMPLES
    arrays = {}
    for s in input_specs(model):
        dims = list(s.shape)
        for ax, dim in enumerate(dims[1:], start=1):
            if not isinstance(dim, int) or dim <= 0:
                raise CalibrationError(
                    f"cannot synthesize input {s.name!r}: axis {ax} is symbolic ({dim!r}). "
                    "Give real calibration data with --calib."
                )
        shape = (n, *dims[1:])
        if s.dtype.kind == "f":
            arrays[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype.kind in "iu":
            arrays[s.name] = rng.integers(0, 2, size=shape).astype(s.dtype)
        else:
            arrays[s.name] = np.zeros(shape, dtype=s.dtype)
    return DataSet(arrays, "synthetic (random normal)", synthetic=True)
