"""The onnxruntime target: Q/DQ placed so that onnxruntime's CPU graph optimizer turns every
quantized layer, and the ops between layers it can run on integers, into integer kernels.

onnxruntime (QDQSelectorActionTransformer, ORT_ENABLE_EXTENDED and up) replaces a node group
by an integer kernel only when the whole group is quantized (onnxruntime's
qdq_selectors.cc / qdq_selector_action_transformer.cc, checked with 1.31):

    DQ(x), DQ(w) [, DQ(bias int32)] -> Conv [-> Relu/Clip] -> Q       QLinearConv
    DQ(a), DQ(b) -> MatMul -> Q                                        QLinearMatMul
    DQ(a), DQ(b) -> MatMul                (no Q: float output)          MatMulIntegerToFloat
    DQ(a), DQ(b) [, DQ(c int32)] -> Gemm [-> Q]                         QGemm
    DQ, DQ -> Add / Mul -> Q;  DQ* -> Concat -> Q                      QLinearAdd/Mul/Concat
    DQ -> GlobalAveragePool / AveragePool / Sigmoid / LeakyRelu / Softmax -> Q     QLinear*
    DQ -> Reshape / Transpose / MaxPool / Resize / Slice / Identity ... -> Q   (same scale and
                                              zero point): the op runs on the 8-bit codes

Every DQ must feed only its target node, every output edge of the target must be a Q (a
float reader of the output breaks the group) and the output must not be a graph output; a
Relu/Clip between the node and its Q is dropped only when the Q's range makes it redundant
(zero point = the type's lowest code); the int32 bias is used as is, so its scale must be
x_scale * w_scale per channel; int8 (s8) activation groups are only fused where int8 is
allowed (ARM, or the session option session.qdq_is_int8_allowed=1): measured on x86 with
1.31, s8 Conv groups still became QLinearConv, s8 MatMul groups stayed float.

Hence the placement (`plan`):
  - integer nodes: the quantized layers (int8 symmetric per-channel weights from OBQ), Add /
    Mul of two activations, Concat, the pooling and unary ops above, and the data-movement
    ops whose input is quantized (their output keeps the input's scale and zero point).
    Attention (MatMul of two activations, Softmax) and Add / Mul with a constant stay float
    (ortplan.py: INTEGER_ATTENTION, QUANTIZE_CONSTANT_INPUTS; measured: less accurate, no
    faster);
  - Add / Mul / pooling nodes whose region reaches no integer layer stay float
    (ortplan.INTEGER_ISLANDS: a Q per input and a DQ per output buy nothing there and
    cost accuracy, e.g. hardswish's products in PP-OCRv4);
  - every activation input of an integer node, and every output, is quantized: x -> Q ->
    DQ, one DQ per integer reader; when the producer is an integer node, float readers read
    a DQ too. A Relu/Clip that is the only reader of an integer node's output takes the
    node's output quantization (its range starts at 0, so onnxruntime drops it);
  - a MatMul/Gemm layer whose readers are all float keeps a float output
    (MatMulIntegerToFloat / QGemm with float output), e.g. before its bias Add or a
    LayerNorm, and so does any node whose output is a graph output or only reaches graph
    outputs through Concat / data movement (the "tail", left float: quantizing detector
    scores or logits to 8 bits costs accuracy), except a Conv's: it gets an integer output
    of its own, and the run measures it float (head_convs);
  - Conv / Gemm biases become int32 codes round(b / (x_scale * w_scale)) behind a
    DequantizeLinear with that scale;
  - an integer Concat's output takes the finest of its inputs' grids that holds every
    input's range, where one does (ortplace.JOIN): onnxruntime then copies that input's
    codes instead of requantizing them.

Activations are "u8" (uint8, asymmetric: zero point from the observed min/max) or "s8"
(int8, symmetric, zero point 0; a Relu/Clip output taken into its producer gets zero point
-128 so the Relu stays redundant). Weights are int8 symmetric per channel, as for TensorRT
(qweights.quantize_weights); layers with other grids (4-bit, blocked, asymmetric) keep their
weight DQ and run in float between float activations.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx

from ..errors import ConfigError
from ..layers import Layer
from ..quant import QuantSpec
from . import (nbits, ortbias, ortclamp, ortgelu, orthires, ortlstm, ortstem, orttables,
               ortweights)
from .floatcand import Candidates
from .ortplace import QParams, place, qparams
from .ortplan import Plan, float_tensors, layer_nodes, plan
from .qweights import QuantizedWeight, quantize_weights

log = logging.getLogger(__name__)
NAME = "onnxruntime"
ACT_TYPES = ("u8", "s8")
DEFAULT_ACT_TYPE = "u8"
LAYER_OPS = ("Conv", "Gemm", "MatMul")


def act_tensors(proto: onnx.ModelProto, layers: list[Layer]) -> list[str]:
    """Every activation the placement may quantize when all `layers` are int8 layers."""
    return plan(proto, layer_nodes(proto, layers)).observed


def float_candidates(proto: onnx.ModelProto, layers: list[Layer], act_bits: int | None,
                     probe: orthires.Probe, float_stem: bool = True, float_highres: bool = True,
                     float_heads: bool = True) -> list[Candidates]:
    """The layers this target may keep float, in groups with their rules (floatcand.py),
    with 8-bit activations: the image stem (ortstem.py; kept float unless that raises the
    output error by more than 2%) unless `float_stem` is False, then the high-resolution
    Convs (orthires.py; kept float where they buy accuracy at a small latency cost) unless
    `float_highres` is False, then the Convs whose output only feeds graph outputs
    (head_convs) unless `float_heads` is False. floatcheck.py measures each group."""
    if act_bits != 8:
        return []
    stem = ortstem.stem_layers(proto, layers) if float_stem else {}
    out = [Candidates("stem", stem, 1.0 + ortstem.MARGIN, ortstem.SLOWER, "--int8-stem")
           ] if stem else []
    if float_highres:
        out += [c for c in orthires.candidates(proto, layers, probe) if set(c.reasons) - set(stem)]
    heads = head_convs(proto, layers) if float_heads else {}  # floatcheck skips the ones
    # an earlier group keeps float
    return out + ([Candidates(HEAD_KIND, heads, 1.0 - ortstem.MARGIN, orthires.SLOWER,
                              "--int8-heads", error_first=True)] if heads else [])


HEAD_KIND = "output convs"


def head_convs(proto: onnx.ModelProto, layers: list[Layer]) -> dict[str, str]:
    """weight -> why, for each Conv layer whose output reaches only graph outputs through
    Concat / data movement (ortplan's tail): the placement gives it an integer output of its
    own, and float_candidates offers it float, kept so where that lowers the output error by
    more than the measurement's noise (ortstem.MARGIN) at most orthires.SLOWER x the latency.
    A float Conv in an integer region reads its input through a DequantizeLinear and a layout
    Transpose: ddddocr's detector paid 0.28 ms of 24 for its three box convs (1 thread) and
    its output error and box F1 were the same with them quantized; openWakeWord's embedding
    conv, on a 3 x 1 map, costs nothing float and its output error is 2.6% lower so."""
    heads = {proto.graph.node[i].name for i in plan(proto, layer_nodes(proto, layers)).heads}
    return {L.weight: "its output only feeds graph outputs" for L in layers
            if any(u.node in heads for u in L.uses)}


def act_values(observers: dict, method: str = "minmax", percentile: float = 99.99
               ) -> dict[str, tuple[float, float]]:
    """tensor -> (lo, hi), the range deploy() turns into a scale and zero point."""
    return {n: o.bounds(method, percentile) for n, o in observers.items()}


def deploy(model: onnx.ModelProto, layers: list[Layer], solved: set[str],
           qweights: dict[str, QuantizedWeight],
           act_scales: dict[str, tuple[float, float]] | None, act_type: str = DEFAULT_ACT_TYPE,
           matmul_nbits: bool = False, nbits_block_size: int | None = None,
           accuracy_level: int = 0, dynamic_lstm: bool = True, tables: bool = True
           ) -> onnx.ModelProto:
    """`model` (compressed float weights in place) as onnxruntime runs it fastest: `qweights`
    behind DequantizeLinear and, with activation ranges (tensor -> (lo, hi)), Q/DQ pairs on
    every tensor of the integer region (see the module docstring). matmul_nbits: MatMul /
    Gemm weights of at most 4 bits as com.microsoft.MatMulNBits (nbits.py) instead.
    dynamic_lstm (with activation ranges): LSTMs as com.microsoft.DynamicQuantizeLSTM, int8
    weights per row (ortlstm.py). Codes no integer kernel would take are dequantized once,
    when the session loads (ortweights.py). tables: float lookup tables read only by Gathers
    as GatherBlockQuantized codes, at 4 bits where every quantized weight has at most 4,
    else 8 (orttables.py)."""
    model = _deploy(model, layers, solved, qweights, act_scales, act_type, matmul_nbits,
                    nbits_block_size, accuracy_level)
    if act_scales is not None:
        model, dropped = ortclamp.drop_bounds(model)  # Max / Min bounds its Q/DQ make
        model, gelus = ortgelu.gelu_nodes(model)  # written-out GELUs as one Gelu each
        model, rows = ortbias.bias_rows(model)  # not a float Gemm at static sizes
        if dropped or gelus or rows:
            log.info("onnxruntime target: %d Max / Min bound(s) dropped (their QuantizeLinear"
                     " saturates there), %d GELU(s) as one Gelu, %d MatMul bias(es) as [1, N]"
                     " (static sizes: not fused into a float Gemm)", dropped, gelus, rows)
        if dynamic_lstm:  # on the layers' range: reduced where theirs is (quant.reduce_range)
            model, notes = ortlstm.rewrite(model, QuantSpec(bits=8, reduced=any(
                q.reduced for q in qweights.values())).qmax)
            for note in notes:
                log.warning(note)
    if tables and qweights:
        model, lines = orttables.rewrite(model, 4 if max(q.bits for q in qweights.values()) <= 4
                                         else 8)
        for line in lines:
            log.info("onnxruntime target: lookup table %s", line)
    model, folded = ortweights.fold(model)  # codes only ever dequantized: once, at load
    if folded:
        log.info("onnxruntime target: %d weight(s) no integer kernel takes stored as codes "
                 "that the session dequantizes once when it loads", len(folded))
    return model


def _deploy(model: onnx.ModelProto, layers: list[Layer], solved: set[str],
            qweights: dict[str, QuantizedWeight],
            act_scales: dict[str, tuple[float, float]] | None, act_type: str,
            matmul_nbits: bool, nbits_block_size: int | None, accuracy_level: int
            ) -> onnx.ModelProto:
    if act_type not in ACT_TYPES:
        raise ConfigError(f"export.act_type must be one of {', '.join(ACT_TYPES)}, got "
                          f"{act_type!r}")
    if matmul_nbits and qweights:
        packed, notes = nbits.select(model, layers, qweights, nbits_block_size)
        for note in notes:  # per variant built; the run's fusion check names each layer
            log.info(note)
        model = nbits.rewrite(model, layers, packed, accuracy_level)
        qweights = {k: q for k, q in qweights.items() if k not in packed}
    if qweights:
        model = quantize_weights(model, layers, qweights)
    if act_scales is None:
        return model
    integer = [L for L in layers if L.weight in solved and L.weight in qweights
               and int8_layer(qweights[L.weight])]
    if not integer:  # no int8 layer: nothing runs on integers, no activation Q/DQ
        return model
    p = plan(model, layer_nodes(model, integer))
    if p.islands:
        ops = Counter(model.graph.node[i].op_type for i in p.islands)
        log.info("onnxruntime target: %d nodes stay float, no integer layer in their region "
                 "or a float gate x * f(x) (ortplan.INTEGER_ISLANDS, INTEGER_FLOAT_GATES): %s",
                 len(p.islands),
                 ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    if not p.tensors:
        return model
    return place(model, p, act_scales, qweights, act_type)


def int8_layer(q: QuantizedWeight) -> bool:
    """Whether onnxruntime has an integer kernel for this weight: signed codes of 5-8 bits
    (int8 storage; at 7 bits x86 CPUs without VNNI cannot saturate their int16 pair sums),
    one scale per output channel, zero point 0."""
    return (5 <= q.bits <= 8 and q.signed and q.block_size is None
            and not np.any(q.zero_point))


__all__ = ["ACT_TYPES", "DEFAULT_ACT_TYPE", "NAME", "Plan", "QParams", "act_tensors",
           "act_values", "deploy", "float_candidates", "float_tensors", "int8_layer", "plan",
           "qparams"]
