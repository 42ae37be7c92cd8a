"""4-bit MatMul weights as onnxruntime's `com.microsoft.MatMulNBits` (the onnxruntime target).

    packed, notes = select(model, layers, qweights, block_size=None)  # weight -> inputs
    model = rewrite(model, layers, packed, accuracy_level=0)    # MatMul -> MatMulNBits

MatMulNBits (onnxruntime's contrib op schema, checked with 1.31) computes A @ B with
B [K, N] stored per output column n as k_blocks = ceil(K / block_size) blocks of block_size
codes along K (block_size a power of two >= 16), each block with its own scale and zero point:

    B       uint8 [N, k_blocks, block_size / 2]   two 4-bit codes a byte, the even k in the
                                                  low nibble; K padded to whole blocks
    scales  float [N * k_blocks]
    zero_points  uint8 [N * ceil(k_blocks / 2)]   packed like B; absent = 8 (2^(bits-1))
    attributes K, N, bits=4, block_size, accuracy_level: 0 = A in float (the default: as
        fast as fp32 on the shipped models' batches, bench/bench_nbits.py), 4 = A quantized
        to int8 per block (faster for one-row inputs and wide layers, slower on small ones)

From our grids (QuantizedWeight, corrections already folded into its scales):
  - symmetric codes q in [-7, 7] (or narrower below 4 bits) are stored as q + 8 with no
    zero_points input (the default 8): dequantized (q + 8 - 8) * scale, exactly ours;
    asymmetric codes are stored as they are, with their zero points packed;
  - a --group-size g scale covers g columns of K; a block must lie inside one group, so
    block_size is the largest power of two >= 16 dividing g (at most 256), its scale that of
    its group; per output channel (no groups) the row's scale is repeated in every block of
    block_size = the requested one, or K rounded up to a power of two (16..128);
  - padded codes are the zero point (they dequantize to 0).

Only weights of at most 4 bits whose every use is a MatMul, or a Gemm with transA=0,
alpha=1 and (if any) a constant bias of N values with beta=1 (the bias becomes MatMulNBits'
bias input), are written this way; the others (Conv, a group size with no power-of-two block,
other Gemms) stay DequantizeLinear, with a note saying why (a Conv's, and a Gemm's with
transB = 1, then become codes the session dequantizes once at load: ortweights.py).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from ..errors import ConfigError, ModelError
from ..layers import Layer, node_label
from .graph import constant, export_graph, fresh, model_opset
from .qweights import QuantizedWeight

DOMAIN = "com.microsoft"
MAX_BLOCK = 256  # largest block taken from a group size
DEFAULT_MAX_BLOCK = 128  # largest block chosen for a per-channel grid
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class NBitsWeight:
    """The MatMulNBits inputs of one weight B [K, N]."""

    blob: np.ndarray  # uint8 [N, k_blocks, block_size // 2]
    scales: np.ndarray  # float32 [N * k_blocks]
    zero_points: np.ndarray | None  # uint8 [N * ceil(k_blocks / 2)]; None: the default 8
    K: int
    N: int
    block_size: int
    bits: int = 4

    @property
    def k_blocks(self) -> int:
        return math.ceil(self.K / self.block_size)

    def codes(self) -> np.ndarray:
        """The unsigned codes [N, K] (unpacked from blob)."""
        return unpack(self.blob, self.N, self.k_blocks * self.block_size)[:, :self.K]

    def zeros(self) -> np.ndarray:
        """Zero point per block [N, k_blocks] (8 when absent)."""
        if self.zero_points is None:
            return np.full((self.N, self.k_blocks), 8, dtype=np.uint8)
        per_row = math.ceil(self.k_blocks / 2)
        return unpack(self.zero_points.reshape(self.N, per_row), self.N, 2 * per_row
                      )[:, :self.k_blocks]

    def dequantize(self) -> np.ndarray:
        """The float32 B [K, N] MatMulNBits multiplies by."""
        rep = np.repeat(np.arange(self.k_blocks), self.block_size)[:self.K]
        z = self.zeros().astype(np.int32)[:, rep]
        s = self.scales.reshape(self.N, self.k_blocks)[:, rep]
        return ((self.codes().astype(np.int32) - z).astype(np.float32) * s).T.copy()


def pack(codes: np.ndarray, n: int, width: int) -> np.ndarray:
    """Unsigned 4-bit codes [n, width] (width even) -> uint8 [n, width // 2], element 2i in
    the low nibble and 2i + 1 in the high nibble of byte i."""
    c = np.asarray(codes, dtype=np.uint8).reshape(n, width // 2, 2)
    return (c[..., 0] | (c[..., 1] << 4)).astype(np.uint8)


def unpack(packed: np.ndarray, n: int, width: int) -> np.ndarray:
    """The inverse of `pack`: uint8 [n, ...] -> codes [n, width]."""
    p = np.asarray(packed, dtype=np.uint8).reshape(n, width // 2)
    return np.stack([p & 0x0F, p >> 4], axis=-1).reshape(n, width)


def block_size_for(q: QuantizedWeight, K: int, requested: int | None = None
                   ) -> tuple[int | None, str]:
    """(block_size, "") for `q`'s grid, or (None, why not)."""
    if q.block_size is None:  # per output channel: any block, the scale repeated
        if requested is not None:
            return requested, ""
        return min(DEFAULT_MAX_BLOCK, 1 << max(4, (K - 1).bit_length())), ""
    g = q.block_size
    if requested is not None:
        if g % requested:
            raise ConfigError(f"export.nbits_block_size {requested} does not divide the group "
                              f"size {g} (quant.group_size): a MatMulNBits block needs one "
                              "scale; use a power of two >= 16 that divides the group size, "
                              "or leave export.nbits_block_size unset")
        return requested, ""
    b = g & -g  # largest power of two dividing g
    if b < 16:
        return None, (f"group size {g} has no power-of-two divisor >= 16 (MatMulNBits' "
                      "block_size); use --group-size 16, 32, 64 or 128")
    return min(b, MAX_BLOCK), ""


def to_nbits(layer: Layer, q: QuantizedWeight, block: int) -> NBitsWeight:
    """`q` (a MatMul/Gemm weight of at most 4 bits) as MatMulNBits inputs."""
    codes = q.codes.astype(np.int32)
    scale, zero = q.scale.astype(np.float32), q.zero_point.astype(np.int32)
    if layer.layout == "cols":  # B [K, N]: per-axis scale [N], blocked [K/g, N]
        codes = codes.T
        if q.block_size is not None:
            scale, zero = scale.T, zero.T
    N, K = codes.shape
    g = q.block_size or K
    kb = math.ceil(K / block)
    scale = scale.reshape(N, -1)
    zero = zero.reshape(N, -1)
    group = np.minimum((np.arange(kb) * block) // g, scale.shape[1] - 1)
    s, z = scale[:, group], zero[:, group]  # [N, kb]
    if q.signed:  # symmetric: zero point 0, stored with the default zero point 8
        codes, z = codes + 8, z + 8
    full = np.repeat(z, block, axis=1).astype(np.int32)  # padding = zero point
    full[:, :K] = codes
    if full.min() < 0 or full.max() > 15:
        raise ModelError(f"internal: {layer.name}: codes outside 0..15 for MatMulNBits")
    zp = None
    if not q.signed or np.any(z != 8):
        zw = 2 * math.ceil(kb / 2)
        zpad = np.zeros((N, zw), dtype=np.uint8)
        zpad[:, :kb] = z
        zp = pack(zpad, N, zw).reshape(-1)
    blob = pack(full, N, kb * block).reshape(N, kb, block // 2)
    return NBitsWeight(blob, np.ascontiguousarray(s, dtype=np.float32).reshape(-1), zp, K, N,
                       block)


def _use_ok(use_op: str, node: gs.Node | None, n_out: int) -> str:
    """"" when this use of the weight can become MatMulNBits, else why not."""
    if use_op == "MatMul":
        return ""
    if use_op != "Gemm" or node is None:
        return f"{use_op}: MatMulNBits takes MatMul / Gemm weights only"
    a = node.attrs
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
        return "Gemm with transA or alpha != 1"
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = node.inputs[2]
        if not isinstance(c, gs.Constant) or a.get("beta", 1.0) != 1.0 or c.values.ndim > 2 \
                or (c.values.ndim == 2 and c.values.shape[0] != 1) or c.values.size != n_out:
            return "Gemm with a bias that is not a constant [N] (beta 1)"
    return ""


def select(model: onnx.ModelProto, layers: list[Layer], qweights: dict[str, QuantizedWeight],
           block_size: int | None = None) -> tuple[dict[str, NBitsWeight], list[str]]:
    """The weights of `qweights` written as MatMulNBits (weight -> inputs), and a note for
    every weight of at most 4 bits that stays DequantizeLinear, saying why (one for all
    the Convs)."""
    nodes = _labelled(gs.import_onnx(model), model) if qweights else {}
    out, notes, convs = {}, [], []
    for L in layers:
        q = qweights.get(L.weight)
        if q is None or q.bits > 4:
            continue
        if L.layout in ("conv", "deconv"):
            convs.append(L.name)
            continue
        n_out = L.matrix_shape[1]
        why = next((w for u in L.uses if (w := _use_ok(u.op, nodes.get(u.node), n_out))), "")
        K = L.shape[1] if L.layout == "rows" else L.shape[0]
        block, why_block = block_size_for(q, K, block_size) if not why else (None, "")
        if why or block is None:
            notes.append(f"{L.name}: {q.bits}-bit weights stay DequantizeLinear "
                         f"({why or why_block})")
            continue
        out[L.weight] = to_nbits(L, q, block)
    if convs:
        shown = ", ".join(convs[:3]) + (f" and {len(convs) - 3} more" if len(convs) > 3 else "")
        notes.insert(0, f"{len(convs)} Conv layer(s) at 4 bits or fewer: their weights stay "
                        "codes the session dequantizes once at load, the Conv float "
                        f"(MatMulNBits is for MatMul / Gemm weights; ortweights.py): {shown}")
    return out, notes


def _labelled(graph: gs.Graph, model: onnx.ModelProto) -> dict[str, gs.Node]:
    """node label (layers.node_label) -> the graph-surgeon node (same order as the proto)."""
    return {node_label(p, i): n for i, (p, n) in enumerate(zip(model.graph.node, graph.nodes))}


def rewrite(model: onnx.ModelProto, layers: list[Layer], packed: dict[str, NBitsWeight],
            accuracy_level: int = 0) -> onnx.ModelProto:
    """Copy of `model` where every use of a weight in `packed` is a MatMulNBits node (named
    like the node it replaces) reading the packed codes; `model` itself when `packed` is
    empty. accuracy_level 0 keeps A in float, 4 quantizes it to int8 per block."""
    if accuracy_level not in ACCURACY_LEVELS:
        raise ConfigError(f"export.accuracy_level must be one of 0, 1, 2, 3, 4, got "
                          f"{accuracy_level!r}")
    if not packed:
        return model
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    nodes = _labelled(graph, model)
    for L in layers:
        p = packed.get(L.weight)
        if p is None:
            continue
        fresh(tensors, *(f"{L.weight}_{s}" for s in ("nbits", "nbits_scales",
                                                      "nbits_zero_points")))
        inputs: list[gs.Tensor] = [constant(f"{L.weight}_nbits", p.blob),
                                   constant(f"{L.weight}_nbits_scales", p.scales)]
        if p.zero_points is not None:
            inputs.append(constant(f"{L.weight}_nbits_zero_points", p.zero_points))
        for k, u in enumerate(L.uses):
            node = nodes.get(u.node)
            if node is None or node.inputs[1].name != L.weight:
                raise ModelError(f"internal: node {u.node!r} of weight {L.weight!r} not found")
            _replace(graph, node, inputs, p, accuracy_level,
                     node.name or f"{L.weight}_MatMulNBits_{k}")
    return export_graph(graph, with_domain(model), model_opset(model))


def _replace(graph: gs.Graph, node: gs.Node, weights: list[gs.Tensor], p: NBitsWeight,
             accuracy_level: int, name: str) -> None:
    """`node` (MatMul, or Gemm with an optional bias) -> MatMulNBits with the same output."""
    inputs = [node.inputs[0], *weights]
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
        while len(inputs) < 5:  # zero_points, g_idx absent
            inputs.append(gs.Variable.empty())
        c = node.inputs[2]
        inputs.append(constant(f"{name}_bias", np.asarray(c.values, np.float32).reshape(-1)))
    attrs = {"K": p.K, "N": p.N, "bits": p.bits, "block_size": p.block_size,
             "accuracy_level": int(accuracy_level)}
    outputs = list(node.outputs)
    node.outputs.clear()
    node.inputs.clear()
    graph.nodes.append(gs.Node("MatMulNBits", name, attrs, inputs=inputs, outputs=outputs,
                               domain=DOMAIN))


def with_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model`'s header and graph inputs and outputs (no nodes, no tensors) that
    also imports com.microsoft (what export_graph takes its opset imports, metadata and
    the inputs' and outputs' non-tensor types from)."""
    head = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                           producer_version=model.producer_version, domain=model.domain,
                           model_version=model.model_version, doc_string=model.doc_string)
    head.opset_import.extend(model.opset_import)
    head.metadata_props.extend(model.metadata_props)
    head.graph.input.extend(model.graph.input)
    head.graph.output.extend(model.graph.output)
    if not any(op.domain == DOMAIN for op in model.opset_import):
        head.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return head


def made_by_onnxruntime(model: onnx.ModelProto, optimized: onnx.ModelProto) -> dict[int, int]:
    """accuracy_level -> MatMulNBits nodes onnxruntime's optimizer made itself (from a
    DequantizeLinear of int8 / int4 weights and a MatMul, onnxruntime >= 1.20) in the graph
    it runs for `model`; the nodes `model` has (rewrite's) are not counted."""
    ours = {n.name for n in model.graph.node if n.op_type == "MatMulNBits"}
    return dict(Counter(next((a.i for a in n.attribute if a.name == "accuracy_level"), 0)
                        for n in optimized.graph.node
                        if n.op_type == "MatMulNBits" and not (n.name and n.name in ours)))


def made_line(levels: dict[int, int]) -> str:
    """The report's line for made_by_onnxruntime ("" where it made none at a level > 0)."""
    n = sum(k for level, k in levels.items() if level > 0)
    return (f"{n} MatMul(s) with DequantizeLinear weights run as onnxruntime's own MatMulNBits "
            f"at accuracy_level {max(levels)}: it rounds their activations to int8 per block "
            "at run time (its default; the session option session.qdq_matmulnbits_accuracy_level"
            "=0 keeps them float)") if n else ""
