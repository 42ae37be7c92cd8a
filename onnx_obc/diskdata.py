"""Large tensors no stage reads, kept in the input model's data file instead of in memory.

An initializer stored as external data that onnx-obc never reads or rewrites (today: one
read only as the table of Gather nodes, i.e. an embedding table) is not loaded: the
ModelProto keeps a reference to the input's data file, so the copies the stages make of the
model (the compressed, uncorrected and baseline models, capture and verify sessions) stay
small. Its location is rewritten relative to the filesystem root (`ROOT`), so every reader
finds it without knowing the input's folder: onnxruntime, given the model as bytes, with
`session_options(opts)` (one read-only mapping of the file shared by every session of the
process), and `modelio.write_external`, which copies the bytes from the input's file into the
output's, in chunks.
"""

from __future__ import annotations

import math
import os
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnx.external_data_helper import ExternalDataInfo

from .errors import ModelError

ROOT = Path(os.path.abspath(os.sep))  # where kept tensors' locations start ("/")
OVER = 1 << 20  # bytes: smaller external tensors are loaded as before
KEEP_USES = {("Gather", 0)}  # (op, input index) that never has its values read by a stage
CHUNK = 64 << 20
FOLDER_KEY = "session.model_external_initializers_file_folder_path"


_T = onnx.TensorProto
ITEMSIZE = {_T.FLOAT: 4, _T.FLOAT16: 2, _T.BFLOAT16: 2, _T.DOUBLE: 8, _T.INT8: 1, _T.UINT8: 1,
            _T.INT16: 2, _T.UINT16: 2, _T.INT32: 4, _T.UINT32: 4, _T.INT64: 8, _T.UINT64: 8,
            _T.BOOL: 1}  # the types whose bytes are elements x item size (not packed, no strings)
NUMPY = {_T.FLOAT: np.float32, _T.FLOAT16: np.float16, _T.DOUBLE: np.float64, _T.INT8: np.int8,
         _T.UINT8: np.uint8, _T.INT16: np.int16, _T.UINT16: np.uint16, _T.INT32: np.int32,
         _T.UINT32: np.uint32, _T.INT64: np.int64, _T.UINT64: np.uint64, _T.BOOL: np.bool_}


def _nbytes(t: onnx.TensorProto) -> int | None:
    size = ITEMSIZE.get(t.data_type)
    return None if size is None else math.prod(t.dims) * size


def payload_bytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's payload in memory (raw_data, else 4 x its float_data), from its
    dims and type where they give it: reading t.raw_data copies the bytes (28 ms for
    ddddocr's 33 MB classifier, and the size is asked before every session)."""
    if not t.HasField("raw_data"):
        return 4 * len(t.float_data)
    n = _nbytes(t)
    return len(t.raw_data) if n is None else n


def _subgraph_reads(graph: onnx.GraphProto) -> Iterator[str]:
    for n in graph.node:
        for a in n.attribute:
            for g in [a.g] if a.HasField("g") else list(a.graphs):
                for m in g.node:
                    yield from m.input
                yield from _subgraph_reads(g)


def keepable(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The main graph's external initializers of at least `OVER` bytes whose every use is
    one of `KEEP_USES` (and not a graph output nor read inside a subgraph)."""
    g = model.graph
    uses: dict[str, set[tuple[str, int]]] = {}
    for n in g.node:
        for i, x in enumerate(n.input):
            uses.setdefault(x, set()).add((n.op_type if n.domain in ("", "ai.onnx") else "", i))
    other = {o.name for o in g.output} | set(_subgraph_reads(g))
    out = []
    for t in g.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL or t.name in other:
            continue
        size = _nbytes(t)
        if size is not None and size >= OVER and uses.get(t.name) and uses[t.name] <= KEEP_USES:
            out.append(t)
    return out


def keep(model: onnx.ModelProto, base: Path) -> set[str]:
    """Point the `keepable` tensors of `model` (read from `base`, not yet loaded) at their
    file relative to `ROOT` after checking the file holds them; returns their names."""
    kept = set()
    for t in keepable(model):
        info = ExternalDataInfo(t)
        if not info.location or os.path.isabs(info.location):
            continue  # onnx's loader reports it
        path = (base / info.location).resolve()
        size = _nbytes(t)
        length = info.length if info.length and info.length > 0 else size
        if length != size:
            continue  # onnx's loader reports a wrong length
        offset = info.offset or 0
        if not path.is_file() or offset + length > path.stat().st_size:
            raise ModelError(f"external data of {t.name!r} is missing: {str(path)!r} does not "
                             f"hold {length} bytes at offset {offset}")
        if not path.is_relative_to(ROOT):
            continue  # another drive: loaded as before
        _point(t, path.relative_to(ROOT).as_posix(), offset, length)
        kept.add(t.name)
    return kept


def _point(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        t.external_data.add(key=k, value=v)


def kept(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The initializers of `model` whose data is still on disk (no payload in memory)."""
    return [t for t in model.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data]


def kept_bytes(model: onnx.ModelProto) -> int:
    return sum(ExternalDataInfo(t).length or (_nbytes(t) or 0) for t in kept(model))


def source(t: onnx.TensorProto) -> tuple[Path, int, int]:
    """(file, offset, length) of a kept tensor."""
    info = ExternalDataInfo(t)
    length = info.length if info.length and info.length > 0 else _nbytes(t) or 0
    return ROOT / info.location, info.offset or 0, length


def copy_bytes(t: onnx.TensorProto, out) -> int:
    """Copy a kept tensor's bytes into the open file `out`, in chunks; returns the length."""
    path, offset, length = source(t)
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise ModelError(f"external data file {str(path)!r} of {t.name!r} ends early; "
                                 "was it changed during the run?")
            out.write(chunk)
            left -= len(chunk)
    return length


def load(model: onnx.ModelProto) -> None:
    """Read every kept tensor's bytes into `model` (an inline save needs them)."""
    for t in kept(model):
        path, offset, length = source(t)
        with open(path, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(length)
        t.ClearField("data_location")
        del t.external_data[:]


class _Mapped:
    """A kept tensor's bytes mapped read-only, as the OrtValue sessions share."""

    def __init__(self, t: onnx.TensorProto, path: Path, offset: int) -> None:
        self.array = np.memmap(path, dtype=NUMPY[t.data_type], mode="r", offset=offset,
                               shape=tuple(t.dims))
        self.value = ort.OrtValue.ortvalue_from_numpy(self.array)


_MAPPED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _mapped(t: onnx.TensorProto) -> _Mapped | None:
    path, offset, _ = source(t)
    if t.data_type not in NUMPY or offset % ITEMSIZE[t.data_type] or sys.byteorder != "little":
        return None  # onnxruntime maps or reads it itself
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, offset, t.data_type, tuple(t.dims))
    m = _MAPPED.get(key)
    if m is None:
        m = _MAPPED[key] = _Mapped(t, path, offset)
    return m


def session_options(model: onnx.ModelProto, opts: ort.SessionOptions) -> list[_Mapped]:
    """Let onnxruntime, given `model` as bytes, find its kept tensors: each is handed to it
    as one read-only mapping of the file that every session of the process shares (one
    copy of the pages however many sessions are open; onnxruntime's own mapping would be
    one per session). Returns what the session must keep alive."""
    tensors = kept(model)
    if tensors:
        opts.add_session_config_entry(FOLDER_KEY, str(ROOT))  # it checks the files exist
    shared = []
    for t in tensors:
        m = _mapped(t)
        if m is not None:  # else onnxruntime maps (or reads) it itself
            opts.add_initializer(t.name, m.value)
            shared.append(m)
    return shared


def as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose kept tensors are typed graph inputs instead: what
    onnx.checker and an optimized-graph dump can take without the data (`model` itself when
    it keeps none)."""
    names = {t.name: t for t in kept(model)}
    if not names:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = [t for t in out.graph.initializer if t.name not in names]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    have = {i.name for i in out.graph.input}
    out.graph.input.extend(helper.make_tensor_value_info(n, t.data_type, list(t.dims))
                           for n, t in names.items() if n not in have)
    return out
