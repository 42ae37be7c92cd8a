"""Load and save ONNX models: external data, >2 GB, atomic writes, the input never touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx.external_data_helper import (ExternalDataInfo, load_external_data_for_tensor,
                                       uses_external_data)

from . import diskdata
from .atomic import write_error
from .errors import ModelError

PROTO_LIMIT = 2_000_000_000  # protobuf's 2 GB message limit, with margin
_READS: dict[Path, tuple[tuple[int, int], tuple[Path, ...]]] = {}  # memo: model -> files read


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file {str(p)!r} does not exist")
    try:  # as onnx.load does, in two steps to note the external data files the model reads
        model = onnx.load(str(p), load_external_data=False)
        _remember_reads(p, model)
        kept = diskdata.keep(model, p.parent)  # large tensors no stage reads stay on disk
        for t in onnx.external_data_helper._get_all_tensors(model):
            if uses_external_data(t) and t.name not in kept:
                load_external_data_for_tensor(t, str(p.parent))
    except Exception as exc:
        hint = (" Keep the external data file next to the model."
                if "external" in str(exc).lower() or ".data" in str(exc) else "")
        raise ModelError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {exc}).{hint}"
                         ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{p} is empty or not an ONNX model (no graph was read)")
    return model


def open_model(model: str | os.PathLike | onnx.ModelProto | bytes,
               output: str | os.PathLike | None) -> tuple[str | None, onnx.ModelProto]:
    """(the input's path or None, the model), the output path checked first: never the input
    model or a file it reads, in an existing directory, ending in .onnx."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        model = _parsed(bytes(model))
    elif not isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        raise ModelError(f"model: give a path, an onnx.ModelProto or its serialized bytes, "
                         f"not a {type(model).__name__}")
    src = None if isinstance(model, onnx.ModelProto) else os.fspath(model)
    if output is not None:
        check_output_path(output, src)
    proto = model if src is None else load_model(src)
    g = proto.graph
    made = {t.name: "an input or initializer" for t in [*g.initializer, *g.input]}
    for i, n in enumerate(g.node):  # single assignment: else a cycle in every edit
        for o in (o for o in n.output if o):
            if o in made:  # dynamo names a value like an output name given to it (MiniLM)
                raise ModelError(f"the model defines tensor {o!r} twice ({made[o]} and "
                                 f"{n.op_type} node {n.name or i!r}): not valid ONNX (onnx."
                                 "checker and onnxruntime refuse it). Re-export it (torch's "
                                 "dynamo exporter: choose other output_names)")
            made[o] = f"{n.op_type} node {n.name or i!r}"
    return src, proto


def tensor_outputs(model: onnx.ModelProto) -> list[str]:
    """The graph outputs that are tensors, what the verification compares (not skl2onnx's
    ZipMap, a sequence of maps: its probabilities are also a tensor before it)."""
    return [o.name for o in model.graph.output
            if o.type.WhichOneof("value") in (None, "tensor_type")]


def _parsed(data: bytes) -> onnx.ModelProto:
    """A model from its serialized bytes (as onnxruntime takes it); refused where its
    tensors are in external data files, which bytes cannot locate."""
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:
        raise ModelError(f"the bytes given are not a serialized ONNX model "
                         f"({type(exc).__name__}: {exc})") from None
    if any(uses_external_data(t) for t in onnx.external_data_helper._get_all_tensors(model)):
        raise ModelError("the serialized model keeps tensors in external data files, which "
                         "bytes cannot locate: pass the model's path")
    return model


def _external_locations(model: onnx.ModelProto, base: Path) -> tuple[Path, ...]:
    """The external data files the (not yet loaded) model's tensors point to."""
    found: dict[Path, None] = {}
    for t in onnx.external_data_helper._get_all_tensors(model):  # what onnx.load reads
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = ExternalDataInfo(t).location
            if loc:
                found[(base / loc).resolve()] = None
    return tuple(found)


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_mtime_ns, st.st_size


def _remember_reads(p: Path, model: onnx.ModelProto) -> None:
    key = p.resolve()
    _READS[key] = (_stamp(key), (key, *_external_locations(model, key.parent)))
    while len(_READS) > 16:
        del _READS[next(iter(_READS))]


def input_files(path: str | os.PathLike) -> tuple[Path, ...]:
    """The model file and every external data file it reads (resolved paths): the files
    onnx-obc must never write over. Remembered by load_model; read again (without the
    external data) only for a model it has not loaded."""
    key = Path(path).resolve()
    if not key.is_file():
        return (key,)
    hit = _READS.get(key)
    if hit is None or hit[0] != _stamp(key):
        try:
            _remember_reads(key, onnx.load(str(key), load_external_data=False))
        except Exception:  # not a model: only the file itself is protected
            return (key,)
        hit = _READS[key]
    return hit[1]


def _is_one_of(p: Path, files: tuple[Path, ...]) -> bool:
    if p in files:
        return True
    return p.exists() and any(f.exists() and os.path.samefile(p, f) for f in files)


def data_file_name(out: str | os.PathLike, inp: str | os.PathLike | None) -> str:
    """Name of the output's external data file: `OUT.onnx.data`, or `OUT.onnx.obc.data`
    (`.obc2.data`, ...) when the input model reads a file of that name."""
    o = Path(out).resolve()
    for i in range(1, 100):
        name = o.name + (".data" if i == 1 else ".obc.data" if i == 2 else f".obc{i - 1}.data")
        p = o.parent / name
        if inp is None or not p.exists() or not _is_one_of(p, input_files(inp)):
            return name
    raise ModelError(f"every external data name for {str(out)!r} is taken by the input model's "
                     "files; choose another output name")


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializer and Constant tensor payloads in memory (what decides the 2 GB
    limit; tensors kept in the input's data file, diskdata.py, are not counted)."""
    total = sum(diskdata.payload_bytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.name == "value" and a.HasField("t"):
                total += diskdata.payload_bytes(a.t)
    return total


def needs_external(model: onnx.ModelProto) -> bool:
    return tensor_bytes(model) > PROTO_LIMIT


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all the model's tensor payloads: in memory and kept on disk."""
    return tensor_bytes(model) + diskdata.kept_bytes(model)


def writes_external(model: onnx.ModelProto) -> bool:
    """Whether an automatic save writes an external data file: over the 2 GB limit, or
    tensors kept in the input's data file (they are copied to the output's)."""
    return needs_external(model) or bool(diskdata.kept(model))


def check_output_path(out: str | os.PathLike, inp: str | os.PathLike | None) -> Path:
    o = Path(out).resolve()
    if inp is not None:
        i = Path(inp).resolve()
        if o == i or (o.exists() and os.path.samefile(o, i)):
            raise ModelError(f"output {str(out)!r} is the input model; choose another output path "
                             "(the input is never overwritten)")
        if o.exists() and _is_one_of(o, input_files(i)):
            raise ModelError(f"output {str(out)!r} is an external data file the input model "
                             "reads; choose another output path (the input is never overwritten)")
    if not o.parent.is_dir():
        raise ModelError(f"output directory {str(o.parent)!r} does not exist; create it first")
    if o.is_dir():
        raise ModelError(f"output {str(out)!r} is a directory; give a file path in it, e.g. "
                         f"{str(Path(out) / 'model.onnx')!r}")
    if o.suffix != ".onnx":
        raise ModelError(f"output {str(out)!r} should end in .onnx")
    return o


def save_model(model: onnx.ModelProto, out: str | os.PathLike, *, inp: str | os.PathLike | None,
               external: bool | None = None) -> list[Path]:
    """Write atomically: into a temp dir beside `out`, then rename. Returns written paths."""
    o = check_output_path(out, inp)
    external = writes_external(model) if external is None else external
    data_name = data_file_name(o, inp) if external else ""  # never a file the input reads
    written: list[Path] = []
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".onnx-obc-", dir=o.parent))
    except OSError as exc:
        raise ModelError(write_error(o, exc)) from None
    try:
        target = tmp / o.name
        if external:
            write_external(model, target, data_name)
        elif diskdata.kept(model):  # inline asked for: the kept tensors are read in
            inline = onnx.ModelProto()
            inline.CopyFrom(model)
            diskdata.load(inline)
            onnx.save_model(inline, str(target))
            del inline
        else:
            onnx.save_model(model, str(target))
        if external and (tmp / data_name).exists():  # absent when every tensor is tiny
            os.replace(tmp / data_name, o.parent / data_name)
            written.append(o.parent / data_name)
        os.replace(target, o)
        return [o, *written]
    except BaseException as exc:  # a full disk, or Ctrl-C
        for p in written:  # a data file without its model is a partial output
            p.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ModelError(write_error(o, exc)) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def serialized_or_path(model: onnx.ModelProto, workdir: Path) -> bytes | str:
    """What onnxruntime.InferenceSession accepts: bytes, or a file path for >2 GB models
    (bytes of a model with tensors kept on disk also need diskdata.session_options)."""
    if not needs_external(model):
        return model.SerializeToString()
    path = workdir / "model.onnx"
    write_external(model, path, "model.onnx.data")
    return str(path)


@contextlib.contextmanager
def payloads_aside(model: onnx.ModelProto, over: int) -> Iterator[dict[str, bytes]]:
    """The initializer payloads (raw_data) larger than `over` bytes, taken out of `model`
    for the duration of the block and put back after it: a copy or serialisation of the
    model inside the block is cheap and never meets protobuf's 2 GB limit."""
    aside: dict[str, bytes] = {}
    for t in model.graph.initializer:
        if t.HasField("raw_data") and diskdata.payload_bytes(t) > over:
            aside[t.name] = t.raw_data
            t.ClearField("raw_data")  # one copy of each payload at any time
    try:
        yield aside
    finally:
        for t in model.graph.initializer:
            if t.name in aside:
                t.raw_data = aside[t.name]


def write_external(model: onnx.ModelProto, target: Path, data_name: str,
                   over: int = 1024) -> None:
    """Write `model` to `target` with every initializer payload over `over` bytes in
    target's folder / `data_name` (4 KiB-aligned offsets), one tensor at a time and without
    copying the model (onnx.save_model's external-data path empties the proto it is given,
    so it needs a whole copy); tensors kept in the input's data file (diskdata.py) are
    copied from it in chunks; `model` is left as it was."""
    with payloads_aside(model, over) as aside:
        shell = onnx.ModelProto()
        shell.CopyFrom(model)  # everything but the large payloads
        on_disk = {t.name for t in diskdata.kept(shell)}
        offset = 0
        with open(target.parent / data_name, "wb") as f:
            for t in shell.graph.initializer:
                data = aside.get(t.name)
                if data is None and t.name not in on_disk:
                    continue
                pad = -offset % 4096
                f.write(b"\0" * pad)
                offset += pad
                if data is None:
                    length = diskdata.copy_bytes(t, f)
                else:
                    f.write(data)
                    length = len(data)
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in (("location", data_name), ("offset", str(offset)),
                             ("length", str(length))):
                    t.external_data.add(key=k, value=v)
                offset += length
        onnx.save_model(shell, str(target))
