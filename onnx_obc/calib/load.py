"""Calibration and evaluation data: any accepted input -> a checked source.

Accepted: a `.npz` (keys = model input names, samples along each input's sample axis) or a
`.npy` for a single-input model, memory-mapped when they can be; the same in memory (a
mapping {input_name: array}, e.g. numpy.load's result or a dict of arrays, or one array for
a single-input model); a directory of `.npz`/`.npy`
sample files or images (`preprocess`), read one file at a time; any re-iterable of feed
dicts, a function returning a fresh iterator of them, or an onnxruntime
CalibrationDataReader, read one item at a time on every pass; or None, which synthesizes
inputs from the model's input spec and marks the run as not representative. A one-shot
iterator (a generator object, a reader without rewind()) can be read only once: its items
are held in memory. Which axis holds the samples, and which inputs are fed whole to every
run, comes from the model (layout.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from ..errors import CalibrationError
from .arrays import DataSet
from .files import LABELS, directory, read_arrays, single_input
from .images import Preprocess, reader
from .layout import Feed, Layout, input_specs
from .stream import Scan, StreamSource, reopenable

log = logging.getLogger(__name__)


def load_data(source: Any, model: onnx.ModelProto, *, limit: int | None = None,
              allow_labels: bool = True, preprocess: str | None = None,
              sample_axes: dict[str, int | None] | None = None
              ) -> DataSet | StreamSource:
    """A calibration / eval source from any accepted input, checked against the model;
    at most `limit` samples, and the input is not read past them."""
    layout = Layout.of(input_specs(model), sample_axes)
    arrays = _in_memory(source)
    if arrays is not None:
        return _from_arrays(arrays, "in memory", type(source).__name__, layout, limit,
                            allow_labels)
    if not isinstance(source, (str, os.PathLike)):
        desc = type(source).__name__
        again = reopenable(source)
        if again is not None:
            return _stream(again, layout, desc, limit)
        return _one_shot(source, layout, desc, limit)
    path = os.fspath(source)
    if os.path.isdir(path):
        try:
            pre = Preprocess.parse(preprocess)
        except ValueError as exc:
            raise CalibrationError(f"--calib-preprocess: {exc}") from None
        read = reader(pre, layout) if preprocess or _has_images(path) else None
        return directory(path, layout, limit, read,
                         lambda f: f.lower().endswith((".npz", ".npy")) or (
                             read is not None and pre.accepts(f)))
    if not os.path.isfile(path):
        raise CalibrationError(f"calibration data {path!r} does not exist")
    return _from_file(path, layout, limit, allow_labels)


def _has_images(path: str) -> bool:
    from .images import IMAGE_FILES
    return any(f.lower().endswith(IMAGE_FILES) for _, _, fs in os.walk(path) for f in fs)


def _in_memory(source: Any) -> dict[str, Any] | None:
    """A .npz's arrays held in memory: one array ("", a single-input model's), or a mapping
    of input names to arrays (numpy.load's NpzFile, a dict, with at least one array among
    its values: the others are checked as the file's would be); None for every other
    source (a mapping is otherwise iterated as keys, which no feed dict is)."""
    if isinstance(source, np.ndarray):
        return {"": source}
    if not isinstance(source, Mapping) or not all(isinstance(k, str) for k in source):
        return None
    values = {k: source[k] for k in source}
    if not any(isinstance(v, np.ndarray) for v in values.values()):
        return None
    try:
        return {k: np.asarray(v) for k, v in values.items()}
    except Exception as exc:  # ragged lists and the like
        raise CalibrationError(f"{type(source).__name__}: its values are not arrays ({exc}); "
                               "give {input_name: array with a sample axis}") from None


def _from_file(path: str, layout: Layout, limit: int | None, allow_labels: bool) -> DataSet:
    arrays, held = read_arrays(path)
    if held.startswith("in memory ("):
        log.warning("%s: %s", path, held)
    return _from_arrays(arrays, held, path, layout, limit, allow_labels)


def _from_arrays(arrays: dict[str, Any], held: str, path: str, layout: Layout,
                 limit: int | None, allow_labels: bool) -> DataSet:
    """A DataSet of a .npz's arrays (`path`: where they came from, for the messages)."""
    arrays = single_input(arrays, layout, path)
    labels = arrays.pop(LABELS, None)
    labels = labels if allow_labels else None
    per_sample = [(k, ax) for k, ax in layout.axis.items()
                  if ax is not None and k in arrays and arrays[k].ndim > ax]
    if labels is not None and per_sample:
        total = arrays[per_sample[0][0]].shape[per_sample[0][1]]
        if np.ndim(labels) == 0 or len(labels) != total:
            raise CalibrationError(f"{path}: 'labels' has {np.size(labels)} entries for "
                                   f"{total} samples")
    if limit is not None:  # cut before checking: samples past the limit are never read
        for k, ax in per_sample:
            arrays[k] = arrays[k][(slice(None),) * ax + (slice(0, limit),)]
        labels = None if labels is None else labels[:limit]
    ds = DataSet(layout.check(arrays, path, lazy_cast=True), path, labels=None if labels is None
                 else np.asarray(labels), axes=layout.axis, read_as=held,
                 dtypes={sp.name: sp.dtype for sp in layout.specs})
    return ds


def _check_item(layout: Layout, desc: str):
    def check(item: Any, first: int) -> Feed:
        if not isinstance(item, dict):
            raise CalibrationError(f"{desc}: the item at sample {first} is a "
                                   f"{type(item).__name__}, not a feed dict "
                                   "{input_name: array with a sample axis}")
        return layout.check({k: np.asarray(v) for k, v in item.items()},
                            f"{desc} (the item starting at sample {first})")
    return check


def _stream(again: Any, layout: Layout, desc: str, limit: int | None) -> StreamSource:
    """Stream a re-readable source: this first pass checks every item (up to `limit`
    samples), counts the samples and notes their shapes."""
    src = StreamSource(open_pass=again, check=_check_item(layout, desc), source=desc,
                       layout=layout, largest={}, stop=limit)
    scan = Scan()
    for item in src._samples():
        scan.add(item, layout)
    if not scan.n:
        raise CalibrationError(f"calibration source {desc} yielded no samples; it must yield "
                               "dicts {input_name: array with a sample axis}")
    return replace(src, stop=scan.n, largest=scan.largest, shapes=len(scan.keys))


def _one_shot(source: Any, layout: Layout, desc: str, limit: int | None) -> StreamSource:
    """An iterator that can be read once: its items (up to `limit` samples) are checked
    and kept in memory."""
    it = iter(source.get_next, None) if hasattr(source, "get_next") else source
    if not isinstance(it, Iterator):
        raise CalibrationError(
            f"calibration data of type {desc} is not a path, a dict {{input_name: array}}, an "
            "iterable of feed dicts, or a CalibrationDataReader (or a function returning an "
            "iterator of feed dicts)")
    check, items, n = _check_item(layout, desc), [], 0
    for item in it:
        items.append(check(item, n))
        n += layout.count(items[-1])
        if limit is not None and n >= limit:
            break
    if items:
        log.info("%s can be read only once: its %d samples are held in memory (pass a "
                 "function returning a fresh iterator to stream them)", desc, n)
    src = _stream(lambda: iter(items), layout, desc, limit)
    return replace(src, check=lambda item, first: item,
                   read_as="in memory (a one-shot iterator: pass a function returning a "
                           "fresh iterator to stream)")
