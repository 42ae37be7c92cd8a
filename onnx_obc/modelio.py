"""Load and save ONNX models: external data, >2 GB, atomic writes, the input never touched."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from .errors import ModelError

PROTO_LIMIT = 2_000_000_000  # protobuf's 2 GB message limit, with margin


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file {str(p)!r} does not exist")
    try:
        model = onnx.load(str(p), load_external_data=True)
    except Exception as exc:
        hint = (" Keep the external data file next to the model."
                if "external" in str(exc).lower() or ".data" in str(exc) else "")
        raise ModelError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {exc}).{hint}"
                         ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{p} is empty or not an ONNX model (no graph was read)")
    return model


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializer and Constant tensor payloads (what decides the 2 GB limit)."""
    total = sum(len(t.raw_data) or 4 * len(t.float_data) for t in model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.name == "value" and a.HasField("t"):
                total += len(a.t.raw_data) or 4 * len(a.t.float_data)
    return total


def needs_external(model: onnx.ModelProto) -> bool:
    return tensor_bytes(model) > PROTO_LIMIT


def check_output_path(out: str | os.PathLike, inp: str | os.PathLike | None) -> Path:
    o = Path(out).resolve()
    if inp is not None:
        i = Path(inp).resolve()
        if o == i or (o.exists() and os.path.samefile(o, i)):
            raise ModelError(f"output {str(out)!r} is the input model; choose another output path "
                             "(the input is never overwritten)")
    if not o.parent.is_dir():
        raise ModelError(f"output directory {str(o.parent)!r} does not exist; create it first")
    if o.suffix != ".onnx":
        raise ModelError(f"output {str(out)!r} should end in .onnx")
    return o


def save_model(model: onnx.ModelProto, out: str | os.PathLike, *, inp: str | os.PathLike | None,
               external: bool | None = None) -> list[Path]:
    """Write atomically: into a temp dir beside `out`, then rename. Returns written paths."""
    o = check_output_path(out, inp)
    external = needs_external(model) if external is None else external
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-obc-", dir=o.parent))
    try:
        target = tmp / o.name
        data_name = o.name + ".data"
        if external:  # save_model moves tensors out of the proto it gets: give it a copy
            onnx.save_model(copy.deepcopy(model), str(target), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name,
                            size_threshold=1024, convert_attribute=True)
        else:
            onnx.save_model(model, str(target))
        written = [o]
        if external and (tmp / data_name).exists():  # absent when every tensor is tiny
            os.replace(tmp / data_name, o.parent / data_name)
            written.append(o.parent / data_name)
        os.replace(target, o)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def serialized_or_path(model: onnx.ModelProto, workdir: Path) -> bytes | str:
    """What onnxruntime.InferenceSession accepts: bytes, or a file path for >2 GB models."""
    if not needs_external(model):
        return model.SerializeToString()
    path = workdir / "model.onnx"
    onnx.save_model(copy.deepcopy(model), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024, convert_attribute=True)
    return str(path)
