"""Experiment (not part of the package): PP-OCRv4's float graph simplified, float-exact.

    python bench/ppocr_fold.py bench/real/ppocr_rec.onnx bench/results/ppocr_rec.fold.onnx

Folds each learnable affine block right after a Conv (Conv -> Mul(scalar s) -> Add(scalar t),
paddle2onnx's Constant nodes) into the Conv (W * s, b * s + t) and writes hardswish as
paddle2onnx exports it, x * Clip(x + 3, 0, 6) / 6, as x * HardSigmoid(x, 1/6, 1/2) (the
model is opset 12: no HardSwish). README "Deployment" (ppocr_rec) has what it measures.
"""
import sys
import numpy as np, onnx
from onnx import numpy_helper as nh, helper
m = onnx.load(sys.argv[1])
g = m.graph
const = {}
for n in g.node:
    if n.op_type == 'Constant':
        const[n.output[0]] = (n, nh.to_array(n.attribute[0].t))
readers = {}
for n in g.node:
    for t in n.input: readers.setdefault(t, []).append(n)
prod = {o: n for n in g.node for o in n.output}
def cval(t): return const[t][1] if t in const else None
def setc(name, arr):
    n = const[name][0]; n.attribute[0].t.CopyFrom(nh.from_array(arr.astype(np.float32), name)); const[name] = (n, arr)
remove = set(); nfold = nhs = 0
for n in list(g.node):
    if n.op_type != 'Conv': continue
    r = readers.get(n.output[0], [])
    if len(r) != 1 or r[0].op_type != 'Mul': continue
    mul = r[0]; s = [cval(t) for t in mul.input if t != n.output[0]]
    if len(s) != 1 or s[0] is None or s[0].size != 1: continue
    r2 = readers.get(mul.output[0], [])
    if len(r2) != 1 or r2[0].op_type != 'Add': continue
    add = r2[0]; t = [cval(x) for x in add.input if x != mul.output[0]]
    if len(t) != 1 or t[0] is None or t[0].size != 1: continue
    s, t = float(s[0].ravel()[0]), float(t[0].ravel()[0])
    W = cval(n.input[1]); setc(n.input[1], W * s)
    if len(n.input) > 2:
        setc(n.input[2], cval(n.input[2]) * s + t)
    else:
        bn = n.output[0] + '_foldbias'
        c = helper.make_node('Constant', [], [bn], value=nh.from_array(np.full(W.shape[0], t, np.float32), bn))
        g.node.insert(list(g.node).index(n), c); const[bn] = (c, None); n.input.append(bn)
    n.output[0] = add.output[0]; remove |= {id(mul), id(add)}; nfold += 1
# hardswish: a -> Add(3) -> Clip(0, 6) -> Mul(a, clip) -> Div(6)
readers = {}
for n in g.node:
    if id(n) in remove: continue
    for x in n.input: readers.setdefault(x, []).append(n)
for n in list(g.node):
    if n.op_type != 'Add' or id(n) in remove: continue
    c3 = [cval(x) for x in n.input[1:]] + [cval(n.input[0])]
    a = [x for x in n.input if x not in const]
    if len(a) != 1 or not any(v is not None and v.size == 1 and float(v.ravel()[0]) == 3.0 for v in c3): continue
    a = a[0]; r = readers.get(n.output[0], [])
    if len(r) != 1 or r[0].op_type != 'Clip': continue
    clip = r[0]; r = readers.get(clip.output[0], [])
    if len(r) != 1 or r[0].op_type != 'Mul' or a not in r[0].input: continue
    mul = r[0]; r = readers.get(mul.output[0], [])
    if len(r) != 1 or r[0].op_type != 'Div' or float(cval(r[0].input[1]).ravel()[0]) != 6.0: continue
    div = r[0]
    hsg = helper.make_node('HardSigmoid', [a], [div.output[0] + '_hsig'], name=div.name + '_hsig', alpha=1/6, beta=0.5)
    hs = helper.make_node('Mul', [a, div.output[0] + '_hsig'], [div.output[0]], name=div.name + '_hswish')
    i = list(g.node).index(div); g.node.insert(i, hs); g.node.insert(i, hsg)
    remove |= {id(n), id(clip), id(mul), id(div)}; nhs += 1
keep = [n for n in g.node if id(n) not in remove]
del g.node[:]; g.node.extend(keep)
onnx.checker.check_model(m)
onnx.save(m, sys.argv[2])
print('folded', nfold, 'hardswish', nhs)
