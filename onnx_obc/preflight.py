"""Up-front checks: what can be known before capture and solve is checked here, so a run
that cannot finish stops at once with the reason and the fix. `check()` is the one entry
(convert calls it before calibration); each check is a small function of explicit values
(paths, the proto, the selected layers, a memory limit). Problems raise ObcError
subclasses; things worth knowing are returned as warnings (and logged)."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from . import modelio
from .errors import ModelError, ObcError
from .layers import Layer, constant_weights, node_label

log = logging.getLogger(__name__)
MARGIN = 1 << 20  # graph and headers, on top of the weights


def check(proto: onnx.ModelProto, layers: list[Layer], *, model_path: str | None,
          output: str | os.PathLike | None, report_path: str | os.PathLike | None = None,
          external: bool | None = None, bits: bool = False, act_bits: bool = False,
          custom_op_library: str | None = None, calib: Any = None, sequential: bool = False,
          memory_limit: int | None = None, blocks: dict[str, int] | None = None) -> list[str]:
    """Every up-front check; returns the warnings (logged too). bits / act_bits: weights /
    activations will be QDQ; memory_limit: bytes (None: what is available now); blocks:
    weight -> column blocks its Hessian is held in (the plan's; default 1)."""
    check_custom_ops(proto, custom_op_library)
    reads = modelio.input_files(model_path) if model_path is not None else ()
    if isinstance(calib, (str, os.PathLike)):
        reads += (Path(calib).resolve(),)
    notes: list[str] = []
    writes: tuple[Path, ...] = ()
    if output is not None:
        check_output_space(output, modelio.weight_bytes(proto) + MARGIN)
        name, notes = external_data_name(output, model_path, external, proto)
        writes = (Path(output).resolve(), Path(output).resolve().parent / name)
    if report_path is not None:
        check_report_path(report_path, reads + writes)
    check_dtypes(layers, bits, act_bits)
    check_finite(proto, layers)
    check_memory(layers, available_memory() if memory_limit is None else memory_limit,
                 sequential, blocks)
    notes += input_initializers(proto)
    for n in notes:
        log.warning(n)
    return notes


# --------------------------------------------------------------------------- files


def probe_dir(folder: Path, what: str) -> None:
    """Create and remove a file in `folder`: writable, or a clear error."""
    try:
        fd, name = tempfile.mkstemp(prefix=".onnx-obc-probe-", dir=folder)
    except OSError as exc:
        raise ModelError(f"cannot write the {what} in {str(folder)!r} "
                         f"({exc.strerror or exc}); choose a path in a directory you can "
                         "write to") from None
    os.close(fd)
    os.unlink(name)


def check_output_space(output: str | os.PathLike, need: int) -> None:
    """The output directory is writable and has about `need` bytes free (the input's
    weights bound the output: quantized weights are smaller)."""
    folder = Path(output).resolve().parent
    probe_dir(folder, "output model")
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ModelError(f"not enough space for the output in {str(folder)!r}: about "
                         f"{_size(need)} are needed (the input model's weights), {_size(free)} "
                         "free; free space there or write the output elsewhere")


def external_data_name(output: str | os.PathLike, model_path: str | None,
                       external: bool | None, proto: onnx.ModelProto
                       ) -> tuple[str, list[str]]:
    """(name of the output's data file, a warning when the usual name is the input's)."""
    name = modelio.data_file_name(output, model_path)
    usual = Path(output).name + ".data"
    uses = external or (external is None and modelio.writes_external(proto))
    if not uses or name == usual:
        return name, []
    return name, [f"the input model reads its weights from {usual}, so the output's weights go "
                  f"to {name} (the input's files are never written over)"]


def check_report_path(path: str | os.PathLike, taken: tuple[Path, ...] = ()) -> None:
    """--report: a file path in an existing, writable directory, not a file the run reads
    or writes, and room for it."""
    p = Path(path)
    if p.is_dir():
        raise ObcError(f"report path {str(path)!r} is a directory; give a file, e.g. "
                       f"{str(p / 'report.json')!r}")
    r = p.resolve()
    if not r.parent.is_dir():
        raise ObcError(f"the report's directory {str(r.parent)!r} does not exist; create it "
                       "first or give --report another path")
    if any(r == t or (r.exists() and t.exists() and os.path.samefile(r, t)) for t in taken):
        raise ObcError(f"report path {str(path)!r} is a file this run reads or writes (the "
                       "model, its data, the output or the calibration data); choose another")
    try:
        probe_dir(r.parent, "report")
    except ModelError as exc:
        raise ObcError(str(exc)) from None
    if shutil.disk_usage(r.parent).free < MARGIN:
        raise ObcError(f"no space for the report in {str(r.parent)!r} (less than 1 MiB "
                       "free); free space there or give --report another path")


def _size(n: float) -> str:
    k = min(3, int(math.log(max(n, 1), 1024)))
    return f"{n:.0f} bytes" if k == 0 else f"{n / 1024 ** k:.1f} {('KiB', 'MiB', 'GiB')[k - 1]}"


# --------------------------------------------------------------------------- weights


def check_dtypes(layers: list[Layer], bits: bool, act_bits: bool) -> None:
    """QDQ output is float32 only: refuse other weight dtypes before any work."""
    if not (bits or act_bits):
        return
    bad = [L for L in layers if L.dtype != "float32"]
    if not bad:
        return
    L, flag = bad[0], "--bits" if bits else "--act-bits"
    more = f" (and {len(bad) - 1} more layers)" if len(bad) > 1 else ""
    raise ModelError(f"weights of layer {L.name} ({L.weight!r}) are {L.dtype}{more}; {flag} "
                     "writes float32 QDQ: convert the model to float32 first (re-export it "
                     f"in float32), leave those layers out with --exclude, or prune only "
                     f"(drop {flag})")


def check_finite(proto: onnx.ModelProto, layers: list[Layer], chunk: int = 1 << 24) -> None:
    """No NaN/inf in the selected layers' weights (it would poison the Hessian solve)."""
    weights = constant_weights(proto.graph)
    for L in layers:
        flat = numpy_helper.to_array(weights[L.weight][1]).reshape(-1)
        for i in range(0, flat.size, chunk):
            ok = np.isfinite(flat[i:i + chunk])
            if ok.all():
                continue
            bad = int(sum(np.count_nonzero(~np.isfinite(flat[j:j + chunk]))
                          for j in range(i, flat.size, chunk)))
            first = np.unravel_index(i + int(np.argmin(ok)), tuple(weights[L.weight][1].dims))
            raise ModelError(f"weight {L.weight!r} of layer {L.name} has {bad} NaN/inf "
                             f"value(s), the first at index {tuple(int(x) for x in first)}: the "
                             "model itself is broken; fix or re-export it, or leave the layer "
                             f"out with --exclude {L.uses[0].node!r}")


# --------------------------------------------------------------------------- memory


def available_memory() -> int:
    """Bytes of memory available now: MemAvailable (else all physical memory), bounded by
    the cgroup (v2) limit."""
    try:
        info = Path("/proc/meminfo").read_text()
        avail = int(re.search(r"^MemAvailable:\s+(\d+) kB", info, re.M).group(1)) * 1024
    except (OSError, AttributeError, ValueError):
        avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def layer_memory(L: Layer, sequential: bool = False, blocks: int = 1) -> tuple[int, int]:
    """(Hessian accumulator bytes, solver working set bytes) of one layer, its Hessian held
    in `blocks` diagonal blocks."""
    G, _, d = L.matrix_shape
    n = d // blocks
    return G * d * n * 8 * (2 if sequential else 1), 3 * d * n * 4


def check_memory(layers: list[Layer], limit: int, sequential: bool = False,
                 blocks: dict[str, int] | None = None) -> None:
    """Each layer's Hessian (and, one-shot, all of them together) must fit in `limit`;
    `blocks` (weight -> k): the Hessians the plan keeps in k diagonal blocks."""
    k = {L.weight: (blocks or {}).get(L.weight, 1) for L in layers}
    for L in layers:
        hess, work = layer_memory(L, sequential, k[L.weight])
        if hess + work > limit:
            G, _, d = L.matrix_shape
            raise ModelError(
                f"layer {L.name} needs about {_size(hess + work)} of memory: its Hessian is "
                f"{G} x {d} x {d} float64 ({_size(hess)}; d = {d} inputs per output) plus "
                f"about {_size(work)} for the solver, and {_size(limit)} are available. Leave "
                f"it out with --exclude {L.uses[0].node!r}, or compress a smaller model")
    if not sequential and layers:
        mem = {L.weight: layer_memory(L, False, k[L.weight]) for L in layers}
        total = sum(m[0] for m in mem.values()) + max(m[1] for m in mem.values())
        if total > limit:
            big = sorted(layers, key=lambda L: -mem[L.weight][0])[:3]
            raise ModelError(
                f"the Hessians of all {len(layers)} layers need about {_size(total)} together "
                f"and {_size(limit)} are available; compress in groups with --sequential "
                f"--sequential-groups K, or leave the largest out with --exclude (largest: "
                f"{', '.join(L.name for L in big)})")


# --------------------------------------------------------------------------- ops


@functools.lru_cache(maxsize=1)
def _known_ops() -> frozenset[tuple[str, str]] | None:
    """(domain, op) pairs onnxruntime has a schema for; None when it cannot say."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as C

        return frozenset((s.domain, s.name) for s in C.get_all_operator_schema())
    except Exception:  # pragma: no cover - other onnxruntime builds
        return None


def _nodes(graph: onnx.GraphProto, owner: str = ""):  # -> Iterator[(label, node)]
    for i, node in enumerate(graph.node):
        label = node_label(node, i) + (f" (in a subgraph of {owner})" if owner else "")
        yield label, node
        for a in node.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                yield from _nodes(sub, owner or node_label(node, i))


def unknown_ops(proto: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(node, op, domain) of the nodes onnxruntime has no schema for (custom ops); ops
    defined as functions in the model do not count."""
    known = _known_ops()
    local = {(f.domain, f.name) for f in proto.functions}
    nodes = list(_nodes(proto.graph))
    for f in proto.functions:
        nodes += [(f"{n.op_type} in function {f.name}", n) for n in f.node]
    out = []
    for label, n in nodes:
        dom = "" if n.domain == "ai.onnx" else n.domain
        ok = dom in ("", "ai.onnx.ml", "com.microsoft") if known is None else (
            (dom, n.op_type) in known)
        if not ok and (n.domain, n.op_type) not in local:
            out.append((label, n.op_type, n.domain))
    return out


def check_custom_ops(proto: onnx.ModelProto, library: str | None) -> None:
    """A given custom-op library must exist and load; without one, every op must be known
    to onnxruntime (it runs the model to calibrate)."""
    if library is not None:
        import onnxruntime as ort

        from .capture import register_library

        register_library(ort.SessionOptions(), library)
        return
    note = unknown_ops_note(proto)
    if note:
        raise ModelError(note)


def unknown_ops_note(proto: onnx.ModelProto) -> str | None:
    """Which ops onnxruntime does not know and how to run the model anyway; None: none."""
    bad = unknown_ops(proto)
    if not bad:
        return None
    shown = "; ".join(f"{n} ({op}, domain {dom!r})" for n, op, dom in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return (f"onnxruntime does not know {len(bad)} op(s) of this model: {shown}{more}. "
            "onnx-obc runs the model in onnxruntime to calibrate: pass the shared library "
            "that implements them with --custom-op-library PATH (convert(..., "
            "custom_op_library=PATH))")


# --------------------------------------------------------------------------- notes


def input_initializers(proto: onnx.ModelProto) -> list[str]:
    """IR < 4 lists every weight as a graph input: those are constants (onnxruntime's view)."""
    inits = {t.name for t in proto.graph.initializer}
    shared = [i.name for i in proto.graph.input if i.name in inits]
    if not shared or proto.ir_version >= 4:
        return []
    return [f"{len(shared)} graph input(s) also have initializers (IR version "
            f"{proto.ir_version}: before IR 4 every weight is listed as an input); they are "
            "treated as constants, as onnxruntime does, and need no calibration data"]
