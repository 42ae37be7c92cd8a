"""The onnxruntime target's placement plan: which nodes run on integers and which tensors
get a QuantizeLinear -> DequantizeLinear pair (onnxruntime.py says why, from onnxruntime's
QDQ fusion rules)."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import numpy_helper

from ..capture import subgraph_reads
from ..layers import Layer, constant_weights
from .graph import DEFAULT_DOMAINS
from .ortpad import zero_pad

LAYER_OPS = ("Conv", "Gemm", "MatMul")
# ops onnxruntime runs as QLinear* kernels when their inputs come from DQ and output goes to Q
COMPUTE_OPS = ("Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool", "Sigmoid",
               "LeakyRelu", "Softmax", "MatMul")
# ops that only move data: DQ -> op -> Q with equal parameters runs the op on the codes
MOVE_OPS = ("MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice",
            "Identity", "Gather", "Expand", "Tile", "Resize", "Split")  # Identity: PP-LCNet
# Split: onnxruntime's dropSplitQDQ rule runs it on the codes when every output goes to a Q
# of the input's parameters. Left float (each output with a range of its own), YOLOv8's C2f
# blocks paid a DQ, a float Split and two Q (a second rounding) each: docs/deployment.md.
CLIP_OPS = ("Relu", "Clip")
# Add/Mul with one constant input: quantize the constant (QLinearAdd/QLinearMul) or leave the
# node float. A MatMul's bias Add stays float: MatMulIntegerToFloat then adds it in float.
# Measured (W8A8 RTN weights): quantizing them cost accuracy on digits_vit (eval output error
# 0.023 -> 0.030) and gained no speed on the synthetic OCR model, so they stay float.
QUANTIZE_CONSTANT_INPUTS = False
BIAS_ADD_INTEGER = False
# MatMul of two activations and Softmax (attention) on integers as well (same measurement)
INTEGER_ATTENTION = False
# Add / Mul / pooling... nodes connected to no integer layer through quantized tensors (an
# "island" between float ops, e.g. hardswish's x * relu6(x + 3) between the float
# per-channel affine ops of PP-OCRv4's backbone) run on integers as well. Such a node buys
# one integer kernel with a Q per input and a DQ per output, and each of those roundings
# costs accuracy: measured on ppocr_rec (docs/deployment.md), the 28 hardswish products
# on u8 alone took the text accuracy from 75.0 to 71.5 and made the output error 0.040 ->
# 0.149, the most of any activation group. They stay float.
INTEGER_ISLANDS = False
# A product x * f(x) whose gate f runs in float (HardSigmoid: no integer kernel; hardswish
# where the fold could not make it one HardSwish) stays float too: on integers the gate gets
# a Q of its own for this one kernel. Measured on the folded ppocr_rec (docs/deployment.md):
# with it on integers, 68.0% text accuracy on 200 lines (error 0.219); float, 74.0% (0.134),
# at the same latency.
INTEGER_FLOAT_GATES = False


@dataclass
class Plan:
    """Where the Q/DQ pairs go. Node indices refer to the model `plan` was given."""

    roles: dict[int, str] = field(default_factory=dict)  # "layer" | "compute" | "move" | "clip"
    tensors: dict[str, str | None] = field(default_factory=dict)  # quantized: None = own
    # range; a tensor name = same scale and zero point as that tensor (data movement)
    consts: dict[str, int] = field(default_factory=dict)  # constant -> the node that reads it
    absorbed: dict[int, int] = field(default_factory=dict)  # producer -> its Relu/Clip
    float_out: dict[int, str] = field(default_factory=dict)  # integer node -> why its output
    # stays float
    islands: list[int] = field(default_factory=list)  # nodes left float: no integer layer
    # in their region (INTEGER_ISLANDS)
    heads: list[int] = field(default_factory=list)  # Convs read only by the tail (quantized)

    @property
    def observed(self) -> list[str]:
        """The tensors whose ranges are captured (every quantized activation)."""
        return list(self.tensors)


def layer_nodes(model: onnx.ModelProto, layers: list[Layer]) -> set[int]:
    """Indices of the nodes that read a layer's weight (input 1) and its activation."""
    pairs = {(u.input, L.weight) for L in layers for u in L.uses}
    return {i for i, n in enumerate(model.graph.node)
            if n.op_type in LAYER_OPS and n.domain in DEFAULT_DOMAINS and len(n.input) > 1
            and (n.input[0], n.input[1]) in pairs}


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors known to be float32 (graph inputs, node outputs by shape
    inference, constants)."""
    from ..capture import _shapes_only  # a light copy for shape inference (no weights)

    m = _shapes_only(model)
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception:  # unknown ops, bad shapes: only the declared types are known
        pass
    f32 = onnx.TensorProto.FLOAT
    out = {vi.name for vi in [*m.graph.value_info, *m.graph.input, *m.graph.output]
           if vi.type.tensor_type.elem_type == f32}
    out |= {k for k, (_, t) in constant_weights(model.graph).items() if t.data_type == f32}
    return out


def data_inputs(node: onnx.NodeProto) -> list[str]:
    """The activation inputs an integer kernel takes from DQ nodes."""
    if node.op_type in ("Add", "Mul", "MatMul"):
        return list(node.input[:2])
    if node.op_type == "Concat":
        return list(node.input)
    return list(node.input[:1])


def plan(model: onnx.ModelProto, layer_nodes: set[int]) -> Plan:
    """The integer region and its quantized tensors for `model` (onnxruntime.py's docstring
    says where and why); `layer_nodes`: the nodes of the layers with int8 weights."""
    g = model.graph
    weights = constant_weights(g)
    consts = set(weights)
    consts |= {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"
               and n.input[0] in consts}  # dequantized weights count as constants
    floats = float_tensors(model)
    outputs = {o.name for o in g.output}
    # what If / Loop / Scan bodies read stays float as outputs do (Silero v4: ORT aborted)
    inner = {t for n in g.node for t in subgraph_reads(n)} - outputs
    outputs |= inner
    producer: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(g.node):
        for t in n.output:
            producer[t] = i
        for t in n.input:
            if t:
                readers.setdefault(t, []).append(i)
    p = Plan()
    bias_adds = _bias_adds(g, layer_nodes, consts, readers) if not BIAS_ADD_INTEGER else set()
    for i, n in enumerate(g.node):  # candidate roles
        if n.domain not in DEFAULT_DOMAINS:
            continue
        if i in layer_nodes:
            p.roles[i] = "layer"
            continue
        op, data = n.op_type, data_inputs(n)
        if not data or any(not t or t not in floats for t in data) or (
                len(n.output) != 1 and op != "Split"):
            continue
        fixed = [t for t in data if t in consts]
        if op in MOVE_OPS or zero_pad(n, weights):  # a zero Pad runs on the codes (ortpad.py)
            if not fixed:
                p.roles[i] = "move"
        elif op in CLIP_OPS:
            p.roles[i] = "clip"
        elif op in COMPUTE_OPS:
            if op in ("Add", "Mul") and fixed:
                if len(fixed) == 1 and QUANTIZE_CONSTANT_INPUTS and i not in bias_adds:
                    p.roles[i] = "compute"
                    p.consts[fixed[0]] = i
            elif not fixed and (op not in ("MatMul", "Softmax") or INTEGER_ATTENTION):
                p.roles[i] = "compute"
    # the tail: Concat / data movement that only leads to graph outputs stays float, and so
    # do the outputs that only feed it but a Conv's (detector scores, logits keep precision)
    tail: set[int] = set()
    for i in range(len(g.node) - 1, -1, -1):
        n = g.node[i]
        if (n.op_type in MOVE_OPS + ("Concat",) and n.domain in DEFAULT_DOMAINS
                and all(_feeds_outputs_only(t, readers, tail, outputs) for t in n.output)):
            tail.add(i)
            p.roles.pop(i, None)
    # a Relu/Clip that alone reads an integer node's output takes over its quantization
    for i, role in list(p.roles.items()):
        if role != "clip":
            continue
        n = g.node[i]
        j = producer.get(n.input[0])
        if (j is not None and p.roles.get(j) in ("layer", "compute")
                and readers.get(n.input[0]) == [i] and n.input[0] not in outputs
                and n.output[0] not in outputs and _clip_starts_at_zero(n, g)):
            p.absorbed[j] = i
        del p.roles[i]
    for i in list(p.absorbed.values()):
        p.roles[i] = "clip"
    if not INTEGER_FLOAT_GATES:
        _drop_float_gates(g, p, producer)
    if not INTEGER_ISLANDS:
        _drop_islands(g, p, readers)

    def integer_reader(t: str) -> bool:
        return any(p.roles.get(r) in ("layer", "compute", "move") for r in readers.get(t, []))

    for i, role in p.roles.items():  # the activation inputs of layers and compute nodes
        if role in ("layer", "compute"):
            for t in data_inputs(g.node[i]):
                if t not in consts:
                    p.tensors.setdefault(t, None)
    for i, n in enumerate(g.node):  # outputs, in topological order
        role = p.roles.get(i)
        if role == "move":  # every output (Split: each read, none a graph output)
            src = n.input[0]
            if src in p.tensors and all(o and o not in outputs and readers.get(o)
                                        for o in n.output):
                p.tensors.update({o: src for o in n.output})
            else:
                del p.roles[i]
        elif role in ("layer", "compute"):
            out = g.node[p.absorbed[i]].output[0] if i in p.absorbed else n.output[0]
            if out in outputs:
                p.float_out[i] = "its output is " + ("read inside an If / Loop / Scan body"
                                                     if out in inner else "a graph output"
                                                     ) + " (kept float)"
            elif _feeds_outputs_only(out, readers, tail, outputs) and n.op_type != "Conv":
                p.float_out[i] = "its output only feeds graph outputs (kept float)"
            elif _feeds_outputs_only(out, readers, tail, outputs):  # onnxruntime.head_convs
                p.heads.append(i)
                p.tensors.setdefault(out, None)
            elif (role == "layer" and n.op_type in ("MatMul", "Gemm")
                  and not integer_reader(out)):
                p.float_out[i] = "no integer reader: float output"
            else:
                p.tensors.setdefault(out, None)
    return p


def _drop_float_gates(g: onnx.GraphProto, p: Plan, producer: dict[str, int]) -> None:
    """Remove the role of each Mul x * h whose h comes from nodes without one reading x:
    directly (x * HardSigmoid(x)) or through an Erf (GELU's x * (Erf(x / c) + 1), which the
    export writes as one Gelu with the 0.5 after it, ortgelu.py)."""
    for i in [i for i, role in p.roles.items() if role == "compute"]:
        n = g.node[i]
        if n.op_type != "Mul":
            continue
        for x, h in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
            if _gated_by(g, p, producer, x, h):
                del p.roles[i]
                p.islands.append(i)
                break


def _gated_by(g: onnx.GraphProto, p: Plan, producer: dict, x: str, h: str, depth: int = 4
              ) -> bool:
    """Whether one float node (no role) makes h of x, or a chain of them through an Erf."""
    ops = []
    for _ in range(depth):
        j = producer.get(h)
        if j is None or j in p.roles:
            return False
        ops.append(g.node[j].op_type)
        if x in g.node[j].input:
            return len(ops) == 1 or "Erf" in ops
        data = [t for t in g.node[j].input if t and t in producer]
        if len(data) != 1:
            return False
        h = data[0]
    return False


def _drop_islands(g: onnx.GraphProto, p: Plan, readers: dict[str, list[int]]) -> None:
    """Remove the roles of the nodes whose integer region (the nodes with a role, joined by
    the tensors one reads from another as a data input) holds no layer."""
    parent = {i: i for i in p.roles}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in p.roles:
        for t in g.node[i].output:
            for r in readers.get(t, []):
                if r in parent and t in data_inputs(g.node[r]):
                    parent[find(r)] = find(i)
    anchored = {find(i) for i, role in p.roles.items() if role == "layer"}
    for i in [i for i in p.roles if find(i) not in anchored]:
        del p.roles[i]
    p.absorbed = {j: c for j, c in p.absorbed.items() if j in p.roles}
    p.islands = sorted(set(p.islands) | (set(parent) - set(p.roles)))


def _feeds_outputs_only(t: str, readers: dict[str, list[int]], tail: set[int],
                        outputs: set[str]) -> bool:
    """Whether `t` is a graph output or read only by tail nodes."""
    r = readers.get(t, [])
    return (t in outputs or bool(r)) and all(i in tail for i in r)


def _bias_adds(g: onnx.GraphProto, layer_nodes: set[int], consts: set[str],
               readers: dict[str, list[int]]) -> set[int]:
    """Adds of a constant to a MatMul layer's output that alone reads it (its bias)."""
    found = set()
    for n in (g.node[i] for i in layer_nodes if g.node[i].op_type == "MatMul"):
        r = readers.get(n.output[0], [])
        if len(r) == 1 and g.node[r[0]].op_type == "Add" and any(
                t in consts for t in g.node[r[0]].input):
            found.add(r[0])
    return found


def _clip_starts_at_zero(node: onnx.NodeProto, g: onnx.GraphProto) -> bool:
    """Relu, or a Clip whose min is a constant 0 (onnxruntime drops it before a Q whose
    zero point is the lowest code)."""
    if node.op_type == "Relu":
        return True
    lo = next((a.f for a in node.attribute if a.name == "min"), None)
    if lo is None and len(node.input) > 1 and node.input[1]:
        t = constant_weights(g).get(node.input[1])
        lo = float(numpy_helper.to_array(t[1])) if t is not None else None
    return lo == 0.0
