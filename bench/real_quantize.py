"""Quantize the real OCR recognizer layer by layer from the Hessians of bench/real_capture.py
and write a float (fake-quantized) model, for bench/real_eval.py.

    python bench/real_quantize.py OUT.onnx --method obc|gptq|rtn [--bits 4] [--minmax]
        [--act-order] [--skip Gemm_97]

Layers in --skip stay dense (OBQ of the 8210 x 1024 classifier takes hours on 2 cores).
Prints per layer the loss relative to min-max RTN and the solver used."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from onnx_obc.layers import find_layers  # noqa: E402
from onnx_obc.quant import QuantSpec, fit_grid, rtn  # noqa: E402
from onnx_obc.solvers import solve_layer  # noqa: E402
from onnx_obc.solvers.prepare import layer_loss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", default="bench/real/ddddocr/common.onnx")
    ap.add_argument("--data", default="bench/real/hessians.npz")
    ap.add_argument("--method", default="obc")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--minmax", action="store_true")
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--skip", default="Gemm_97")
    a = ap.parse_args()
    z = np.load(a.data)
    proto = onnx.load(a.model)
    layers, _ = find_layers(proto)
    inits = {t.name: t for t in proto.graph.initializer}
    spec = QuantSpec(bits=a.bits, mse=not a.minmax)
    mm = QuantSpec(bits=a.bits, mse=False)
    ratios = []
    for L in layers:
        if L.name in a.skip.split(","):
            continue
        W, H = z[f"{L.name}/W"].astype(np.float64), z[f"{L.name}/H"]
        G, r, d = W.shape
        rows = W.reshape(G * r, d)
        base = layer_loss(W, rtn(rows, fit_grid(rows, mm)).reshape(G, r, d), H)
        sol = solve_layer(W, H, quant=spec, method=a.method, act_order=a.act_order)
        ratios.append(sol.loss / base)
        print(f"{L.name:10} {r}x{d:<5} {sol.loss / base:7.3f}  {getattr(sol, 'method_used', '')}",
              flush=True)
        t = inits[L.weight]
        new = L.from_matrix(sol.W).astype(numpy_helper.to_array(t).dtype)
        t.CopyFrom(numpy_helper.from_array(new, t.name))
    print(f"median {np.median(ratios):.3f}, worst {max(ratios):.3f} (loss / min-max RTN)")
    onnx.save(proto, a.out)


if __name__ == "__main__":
    main()
