"""The onnxruntime target's lookup tables: a float [V, D] initializer read only by Gathers on
axis 0 (a transformer's word embeddings) stored as `com.microsoft.GatherBlockQuantized`.

A sentence embedder's vocabulary table is most of its file (all-MiniLM-L6-v2: 30,522 x 384
floats, 46.9 of 90.4 MB) and no layer of the OBS stages: its "input" is an index. Its
layer-wise problem is still exact here: Gather's output row is the table's row for the
token, so the Hessian of the table is diag(token counts) x I and the loss of a grid is a sum
of independent per-row squared errors; with a grid per row block, round-to-nearest on each
block's MSE-searched grid (quant.fit_grid, norm 2) is that problem's solution, whatever
the counts (so no calibration data is needed).

    data [V, D] float32 --codes--> GatherBlockQuantized(codes uint8, ids, scales [V, D/B],
                                                        zero points)  -> [..ids, D] float32

onnxruntime's CPU kernel dequantizes only the gathered rows, (q - z) * s in float32, what
DequantizeLinear computes. Codes: 8 bits (one byte each, block 128 where it divides D) or,
where every quantized layer of the run has at most 4 bits, 4 bits (two per byte, low
nibble first; block 32), asymmetric with a zero point per block. `quantize_static` stores
the same table as int8 codes behind a DequantizeLinear, which the session then runs on the
whole table at every inference. Left float: tables under MIN_ELEMENTS, gathered at
constant indices (the session folds them), of another dtype or rank, read by anything
else than an axis-0 Gather, or also a graph input; D without a block that divides it. A
table kept in the input's external data file (diskdata.py) is read from it in row chunks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from .. import diskdata
from ..quant import QuantSpec, codes, fit_grid
from .graph import constant, export_graph, fresh, model_opset
from .nbits import DOMAIN, with_domain

MIN_ELEMENTS = 1 << 16  # smaller tables stay float (a token-type table: 2 x 384)
BLOCKS = {8: (128, 64, 32, 16), 4: (32, 16)}  # block sizes tried, largest first
CHUNK = 1 << 22  # table values quantized at a time (a table kept on disk is read so)
KEEP = 2  # tables quantized last, kept: a run builds its model several times (the float
# choices, the correction, the variants), each with the same table (MiniLM's: 0.5 s a time)
KEEP_BYTES = 256 << 20  # ... where its codes are at most this (the process keeps them)
_DONE: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()


def tables(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """initializer name -> (V, D) for every table this module quantizes (module docstring)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = set(inits) | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    inputs = {i.name for i in g.input}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for name in set(n.input):
            readers.setdefault(name, []).append(n)
    out = {}
    for name, t in inits.items():
        users = readers.get(name, [])
        if (t.data_type != onnx.TensorProto.FLOAT or len(t.dims) != 2 or name in inputs
                or t.dims[0] * t.dims[1] < MIN_ELEMENTS or not users):
            continue
        if all(n.op_type == "Gather" and n.domain in ("", "ai.onnx") and n.input[0] == name
               and n.input[1] not in consts and _axis(n) == 0 for n in users):
            out[name] = (int(t.dims[0]), int(t.dims[1]))
    return out


def values(t: onnx.TensorProto) -> np.ndarray:
    """A float table's values [V, D]: a read-only memory map of the input's data file where
    it is kept there (diskdata.py), else the array."""
    if t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data:
        path, offset, _ = diskdata.source(t)
        return np.memmap(path, np.float32, "r", offset, tuple(t.dims))
    return numpy_helper.to_array(t)


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def block_for(bits: int, d: int) -> int | None:
    """The block size along D: the largest of BLOCKS[bits] that divides it, else None."""
    return next((b for b in BLOCKS[bits] if d % b == 0), None)


def quantize_table(W: np.ndarray, bits: int, block: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W [V, D] float -> (codes [V, D] uint8 in [0, 2^bits - 1], scales [V, D / block]
    float32, zero points [V, D / block] uint8), read-only: asymmetric RTN on each block's
    MSE-searched grid (quant.fit_grid, its coarse-to-fine search: at 4 bits the full one's
    error to 4 digits in a 25th of the time); the last KEEP tables' results are reused."""
    key = (hashlib.blake2b(np.ascontiguousarray(W).data, digest_size=16).digest(), W.shape,
           bits, block)
    if key not in _DONE:
        spec = QuantSpec(bits=bits, symmetric=False, group_size=block, norm=2.0)
        V, D = W.shape
        q = np.empty((V, D), np.uint8)
        s, z = np.empty((V, D // block), np.float32), np.empty((V, D // block), np.uint8)
        step = max(1, CHUNK // D)  # rows at a time: each row's grids are its own
        for r0 in range(0, V, step):
            rows = np.asarray(W[r0:r0 + step], np.float32)  # a memory map: read here
            grid = fit_grid(rows, spec, coarse=True)
            q[r0:r0 + step] = codes(rows, grid)  # asymmetric: 0 .. 2^bits - 1
            s[r0:r0 + step], z[r0:r0 + step] = grid.scale, grid.zero
        for a in (q, s, z):
            a.setflags(write=False)  # shared by every build of the run
        if q.nbytes > KEEP_BYTES:  # not held after the run: quantized again each build
            return q, s, z
        _DONE[key] = (q, s, z)
        while len(_DONE) > KEEP:
            _DONE.popitem(last=False)
    _DONE.move_to_end(key)
    return _DONE[key]


def dequantize(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, block: int
               ) -> np.ndarray:
    """(q - z) * s per block, in float32: what onnxruntime's kernel computes. [V, D]"""
    V, D = q.shape
    x = q.reshape(V, D // block, block).astype(np.float32) - zeros[..., None].astype(np.float32)
    return (x * scales[..., None]).reshape(V, D)


def pack4(q: np.ndarray) -> np.ndarray:
    """[V, n] 4-bit codes -> [V, ceil(n / 2)] bytes, two per byte, low nibble first."""
    if q.shape[1] % 2:
        q = np.concatenate([q, np.zeros((q.shape[0], 1), q.dtype)], axis=1)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)


def rewrite(model: onnx.ModelProto, bits: int) -> tuple[onnx.ModelProto, list[str]]:
    """`model` with each of its tables (`tables`) read through GatherBlockQuantized at
    `bits` (8 or 4), and a line per table; `model` itself (and no lines) when it has none."""
    found = {k: v for k, v in tables(model).items() if block_for(bits, v[1])}
    if not found:
        return model, []
    inits = {t.name: t for t in model.graph.initializer}
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    lines = []
    for name, (V, D) in found.items():
        B = block_for(bits, D)
        q, s, z = quantize_table(values(inits[name]), bits, B)
        data, zp = (q, z) if bits == 8 else (pack4(q), pack4(z))
        fresh(tensors, *(f"{name}_{k}" for k in ("gbq", "gbq_scales", "gbq_zero_points")))
        codes_c, scales_c, zeros_c = (constant(f"{name}_{k}", v) for k, v in (
            ("gbq", data), ("gbq_scales", s), ("gbq_zero_points", zp)))
        for n in [n for n in graph.nodes if n.op == "Gather" and n.inputs[0] is tensors[name]]:
            outputs, ids = list(n.outputs), n.inputs[1]
            n.outputs.clear()
            n.inputs.clear()
            graph.nodes.append(gs.Node(
                "GatherBlockQuantized", n.name, {"gather_axis": 0, "quantize_axis": 1,
                                                 "block_size": B, "bits": bits},
                inputs=[codes_c, ids, scales_c, zeros_c], outputs=outputs, domain=DOMAIN))
        lines.append(f"{name} [{V}, {D}] as {bits}-bit GatherBlockQuantized (block {B}): "
                     f"{4 * V * D / 1e6:.1f} -> {(data.nbytes + s.nbytes + zp.nbytes) / 1e6:.1f}"
                     " MB")
    return export_graph(graph, with_domain(model), model_opset(model)), lines


def line(model: onnx.ModelProto) -> str:
    """The report's line for the tables `model` stores quantized ("" where none)."""
    inits = {t.name: t for t in model.graph.initializer}
    parts: dict[str, str] = {}  # codes -> words (a table two Gathers read: once)
    for n in model.graph.node:
        if n.op_type == "GatherBlockQuantized" and n.domain == DOMAIN and n.input[0] in inits:
            bits = next((x.i for x in n.attribute if x.name == "bits"), 4)
            rows, width = inits[n.input[0]].dims
            parts[n.input[0]] = (f"{n.input[0].removesuffix('_gbq')} [{rows}, "
                                 f"{width * 8 // bits}] at {bits} bits")
    return ("lookup tables stored as codes (GatherBlockQuantized, dequantized per gathered row;"
            " --float-tables keeps them float): " + ", ".join(parts.values())) if parts else ""
