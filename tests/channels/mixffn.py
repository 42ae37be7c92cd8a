"""SegFormer's Mix-FFN (also PVTv2's) as the HF TorchScript export writes it: fc1 [B, T, C]
-> Transpose -> Reshape [B, C, H, W] -> depthwise 3x3 Conv -> Reshape [B, C, H*W] ->
Transpose -> act -> fc2; the Reshapes' shapes computed from Shape nodes at run time or, as a
static-shape export writes them, constants."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from tests import builders as b


def _c(name: str, arr, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(arr, dtype=dtype), name)


def mix_ffn(d: int = 8, hidden: int = 32, side: int = 4, seed: int = 0, shapes: str = "shape",
            tail: str = "transpose"):
    """`shapes`: "shape" (computed from Shape nodes: the batch read from x, the channel
    count from fc1's output and the conv's), "constant" ([0, C, H, W] and [0, C, H*W]),
    "foreign" (the first Reshape's channel count read from another input z [B, T, C], which
    the cut leaves whole: refused). `tail`: "transpose" (back to [B, T, C] before the act
    and fc2), "mixed" (a Reshape of the conv's output straight to [B, T, C], which
    scrambles the channels: refused), "nct" (fc2 reads [B, C, T], summing T: refused)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    T = side * side
    inits = [b.weight("w1", (d, hidden), seed), _c("b1", rng.standard_normal(hidden)),
             b.weight("dw.w", (hidden, 1, 3, 3), seed + 1),
             _c("dw.b", rng.standard_normal(hidden)),
             b.weight("w2", (T if tail == "nct" else hidden, d), seed + 2),
             _c("hw", [side, side], np.int64), _c("minus1", [-1], np.int64),
             _c("i0", 0, np.int64), _c("i2", 2, np.int64), _c("ax0", [0], np.int64),
             _c("s0", [0], np.int64), _c("s2", [2], np.int64)]
    nodes = [n("MatMul", ["x", "w1"], ["h0"], name="fc1"),
             n("Add", ["h0", "b1"], ["h"], name="fc1.bias"),
             n("Transpose", ["h"], ["ht"], name="to_nct", perm=[0, 2, 1])]
    if shapes == "constant":
        inits += [_c("shape4", [0, hidden, side, side], np.int64),
                  _c("shape3", [0, hidden, T], np.int64)]
    else:
        nodes += [n("Shape", ["x"], ["sx"], name="shape_x"),
                  n("Gather", ["sx", "i0"], ["bsz"], name="batch"),
                  n("Shape", ["z" if shapes == "foreign" else "h"], ["sh"], name="shape_h"),
                  n("Gather", ["sh", "i2"], ["ch"], name="channels"),
                  n("Unsqueeze", ["bsz", "ax0"], ["bsz1"], name="batch1"),
                  n("Unsqueeze", ["ch", "ax0"], ["ch1"], name="channels1"),
                  n("Concat", ["bsz1", "ch1", "hw"], ["shape4"], name="shape4", axis=0)]
    if tail == "mixed":
        inits.append(_c("scrambled", [0, T, hidden], np.int64))
    nodes += [n("Reshape", ["ht", "shape4"], ["img"], name="to_image"),
              n("Conv", ["img", "dw.w", "dw.b"], ["dwo"], name="dwconv", group=hidden,
                pads=[1, 1, 1, 1])]
    if shapes != "constant" and tail != "mixed":  # [B, C] of the conv's output, then -1
        nodes += [n("Shape", ["dwo"], ["sd"], name="shape_dw"),
                  n("Slice", ["sd", "s0", "s2"], ["bc"], name="batch_channels"),
                  n("Concat", ["bc", "minus1"], ["shape3"], name="shape3", axis=0)]
    nodes.append(n("Reshape", ["dwo", "scrambled" if tail == "mixed" else "shape3"], ["seq"],
                   name="to_seq"))
    if tail == "transpose":
        nodes.append(n("Transpose", ["seq"], ["st"], name="to_ntc", perm=[0, 2, 1]))
    nodes += [n("Relu", ["st" if tail == "transpose" else "seq"], ["r"], name="act"),
              n("MatMul", ["r", "w2"], ["y"], name="fc2")]
    out = [b.vi("y", ["N", hidden if tail == "nct" else T, d])]
    ins = [b.vi("x", ["N", T, d])] + [b.vi("z", ["N", T, hidden])] * (shapes == "foreign")
    return b.make(nodes, ins, out, inits)
