"""Capture layer inputs with onnxruntime: they are exposed as extra graph outputs.

Graph optimizations are off (ORT_DISABLE_ALL) so fusions cannot hide the tensors. Each batch
is handed to the caller (who reduces it into Hessians) and dropped. When one pass over all
layers would hold more activations than the memory budget, layers are captured in groups,
one pass over the calibration data per group.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from . import diskdata
from .errors import ModelError
from .modelio import serialized_or_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """How every onnxruntime session of a run is built: the execution providers, and a
    shared library of custom ops (SessionOptions.register_custom_ops_library) or None.
    Passed along wherever sessions are made; a plain provider list still works."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    custom_op_library: str | None = None

    @classmethod
    def of(cls, value: Runtime | Iterable[str]) -> Runtime:
        return value if isinstance(value, Runtime) else cls(tuple(value))

    def options(self, optimize: bool = False, arena: bool = True) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = arena
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if self.custom_op_library is not None:
            register_library(opts, self.custom_op_library)
        return opts


def register_library(opts: ort.SessionOptions, path: str) -> None:
    """Register a custom-op library with `opts`, or say clearly why it cannot be."""
    if not Path(path).is_file():
        raise ModelError(f"custom op library {path!r} does not exist; give the path of the "
                         "shared library (.so/.dll/.dylib) that implements the model's custom ops")
    try:
        opts.register_custom_ops_library(str(path))
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the custom op library {path!r} ({exc}); "
                         "it must be a shared library built against this onnxruntime "
                         f"({ort.__version__})") from None


def providers_for(backend_name: str, custom_op_library: str | None = None) -> Runtime:
    avail = ort.get_available_providers()
    if backend_name == "cupy" and "CUDAExecutionProvider" in avail:
        return Runtime(("CUDAExecutionProvider", "CPUExecutionProvider"), custom_op_library)
    return Runtime(("CPUExecutionProvider",), custom_op_library)


# Sessions whose fetched (or kept) tensors reach this many bytes per run do without
# onnxruntime's CPU memory arena: every fetched output is a fresh arena chunk that the arena
# grows (and faults in page by page) while Python still holds the last one. Capture runs at
# one thread, W8A8 (docs/conversion-time.md): ddddocr's detector (416x416) system
# time 9.7 -> 5.0-5.5 s, peak RSS 3.6 -> 2.5 GB; EfficientNet-Lite0 2.2 -> 1.0-1.1 s.
# Small runs keep it (segments.py: without it every intermediate is a fresh allocation).
ARENA_MAX = 4 << 20
# NO_SPIN: the run's own sessions (capture, correction, verification) let onnxruntime's
# intra-op threads sleep after a run instead of spinning, waiting for the next: between runs
# this process hashes the outputs into Hessians and histograms, and on 2 cores a spinning
# thread took one of them (default W8A8 of ddddocr's recognizer: capture 3.2 -> 2.9 s, user
# CPU 11.3 -> 9.3 s). Latency timings (channels/timing.py, fusion.py) keep the default.


def session(model: onnx.ModelProto, providers: Runtime | list[str], optimize: bool = False,
            arena: bool = True) -> ort.InferenceSession:
    """`arena=False`: no CPU memory arena (segments.py: outputs kept past the run)."""
    rt = Runtime.of(providers)
    opts = rt.options(optimize, arena)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # NO_SPIN
    with tempfile.TemporaryDirectory(prefix="onnx-obc-") as tmp:
        src = serialized_or_path(model, Path(tmp))
        shared = diskdata.session_options(model, opts) if isinstance(src, bytes) else []
        try:
            sess = ort.InferenceSession(src, sess_options=opts, providers=list(rt.providers))
            sess._obc_shared = shared  # the mapped tensors it reads live as long as it does
            return sess
        except Exception as exc:
            hint = ("; if it is a custom op, pass the shared library that implements it with "
                    "--custom-op-library" if "is not a registered function/op" in str(exc)
                    and rt.custom_op_library is None else "")
            raise ModelError(f"onnxruntime cannot load the model: {exc}{hint}") from None


def capture_session(model: onnx.ModelProto, names: Iterable[str],
                    providers: Runtime | list[str], prune: bool = False, arena: bool = True,
                    optimize: bool = False) -> ort.InferenceSession:
    """Session of `model` whose outputs also include `names`. The outputs are appended to
    the proto only while the session is built (no copy of a possibly huge model). `prune`:
    the outputs are `names` alone and only the nodes they depend on are kept (onnxruntime
    runs every node of a graph whatever is fetched; the same kernels on the same inputs,
    so the same tensors). `arena`: see ARENA_MAX; `optimize`: see session."""
    if prune:
        with _ancestors_only(model, list(dict.fromkeys(names))):
            return session(model, providers, optimize, arena)
    have = {o.name for o in model.graph.output}
    extra = [n for n in dict.fromkeys(names) if n not in have]
    n0 = len(model.graph.output)
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in extra)
    try:
        return session(model, providers, optimize, arena)
    finally:
        del model.graph.output[n0:]


def ancestors(nodes: list[onnx.NodeProto], names: Iterable[str]) -> list[int]:
    """Indices, in order, of the `nodes` (topological) that `names` depend on; names a
    subgraph reads from the outer scope count."""
    need, keep = set(names), []
    for i in range(len(nodes) - 1, -1, -1):
        if any(o in need for o in nodes[i].output):
            keep.append(i)
            need.update(n for n in nodes[i].input if n)
            need.update(subgraph_reads(nodes[i]))
    return keep[::-1]


@contextmanager
def _ancestors_only(model: onnx.ModelProto, names: list[str]) -> Iterator[None]:
    """While the block runs, `model`'s graph with only the nodes `names` depend on (names a
    subgraph reads from the outer scope count) and `names` as its outputs; restored after."""
    g = model.graph
    nodes, outputs = list(g.node), list(g.output)
    try:
        del g.node[:]
        g.node.extend(nodes[i] for i in ancestors(nodes, names))
        del g.output[:]
        g.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
        yield
    finally:
        del g.node[:]
        g.node.extend(nodes)
        del g.output[:]
        g.output.extend(outputs)


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Every input name of the nodes in `node`'s subgraphs (If / Loop / Scan bodies), outer
    scope or not (an over-approximation is harmless: a name no node makes is ignored)."""
    out: set[str] = set()
    for a in node.attribute:
        for g in [a.g] if a.HasField("g") else list(a.graphs):
            for n in g.node:
                out.update(i for i in n.input if i)
                out.update(subgraph_reads(n))
    return out


def activation_bytes(model: onnx.ModelProto, names: list[str], feed: dict[str, np.ndarray]
                     ) -> dict[str, int | None]:
    """Bytes of each named tensor for one batch shaped like `feed` (None when unknown)."""
    return activation_infos(model, names, feed)[0]


def activation_infos(model: onnx.ModelProto, names: list[str], feed: dict[str, np.ndarray]
                     ) -> tuple[dict[str, int | None], dict[str, int]]:
    """activation_bytes, and the element type of each named tensor inference tells."""
    m = _shapes_only(model)
    for vi in m.graph.input:
        if vi.name in feed:
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, feed[vi.name].shape):
                d.ClearField("dim_param")
                d.dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception:
        return {n: None for n in names}, {}
    infos = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output,
                                     *inferred.graph.input]}
    types = {n: infos[n].type.tensor_type.elem_type for n in names
             if n in infos and infos[n].type.tensor_type.elem_type}
    out: dict[str, int | None] = {}
    for n in names:
        vi = infos.get(n)
        dims = [d.dim_value if d.HasField("dim_value") else 0
                for d in vi.type.tensor_type.shape.dim] if vi is not None else []
        if vi is None or not vi.type.tensor_type.HasField("shape") or 0 in dims:
            out[n] = None
        else:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(
                vi.type.tensor_type.elem_type)).itemsize
            out[n] = itemsize * math.prod(dims)
    return out, types


def measured_bytes(model: onnx.ModelProto, sizes: dict[str, int | None], feed: dict[str, Any],
                   data: Any, providers: Runtime | list[str], budget: int
                   ) -> dict[str, int | None]:
    """`sizes` (activation_bytes for a batch shaped like `feed`) with the unknown ones (shape
    inference could not tell, e.g. convs behind a "same" Pad whose pads the graph computes
    at run time, as EfficientNet's PyTorch export) measured: one sample of `data` through
    a session pruned to them, fetched in the groups plan_groups packs with them unknown (no
    fetch holds more than such a group), each tensor's bytes scaled by the elements of
    `feed` over the sample's. Without it every unknown tensor counted as the largest known
    one (budget / 8 when none is known), and efficientnet_lite0's 50 layer inputs took 13
    capture passes, each re-running the network up to its group, instead of one. Left
    unknown, with a logged warning, when the run fails (the capture then takes more passes,
    the same tensors)."""
    unknown = [n for n, v in sizes.items() if v is None]
    try:
        _, one = next(iter(data.batches(1)))
        scale = sum(math.prod(v.shape) for v in feed.values()) / max(
            1, sum(math.prod(np.shape(v)) for v in one.values()))
        sess = capture_session(model, unknown, providers, prune=True)
        out = dict(sizes)
        for group in plan_groups([[n] for n in unknown], sizes, budget):
            for n, y in zip(group, sess.run(group, one)):
                out[n] = int(y.nbytes * scale)
        return out
    except Exception as exc:  # onnxruntime's errors have no common base class
        log.warning("the sizes of %d activations shape inference cannot tell were not "
                    "measured (%s); each counts as the largest known one, which may take more "
                    "capture passes", len(unknown), exc)
        return sizes


def _shapes_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """A light copy for shape inference: large float initializers (weights, which never
    decide a shape) become typed graph inputs instead of carrying their data."""
    m = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "domain", "model_version"):
        setattr(m, field, getattr(model, field))
    m.opset_import.extend(model.opset_import)
    g = m.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    inputs = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        small = t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                    onnx.TensorProto.DOUBLE) or math.prod(t.dims) <= 4096
        if small:
            g.initializer.append(t)
        elif t.name not in inputs:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return m


def plan_groups(units: list[list[str]], sizes: dict[str, int | None], budget: int
                ) -> list[list[str]]:
    """Pack units (the activations one layer needs, kept together) in order into groups of
    tensor names whose activations fit the budget together; unknown sizes count as the
    largest known one. A unit larger than the budget gets a group of its own."""
    known = [s for s in sizes.values() if s]
    fallback = max(known) if known else budget // 8
    groups: list[list[str]] = [[]]
    used = 0
    for unit in units:
        new = [n for n in unit if n not in groups[-1]]
        size = sum(sizes.get(n) or fallback for n in new)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
            new = list(dict.fromkeys(unit))
            size = sum(sizes.get(n) or fallback for n in new)
        groups[-1].extend(new)
        used += size
    return groups


def capture(sess: ort.InferenceSession | None, names: list[str],
            batches: Iterable[tuple[int, dict[str, np.ndarray]]]
            ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Run each batch; yield (samples, {tensor name: activation}), graph inputs included."""
    for samples, feed in batches:
        outs = sess.run(names, feed) if sess is not None and names else []
        yield samples, {**feed, **dict(zip(names, outs))}
