"""The W8A8 onnxruntime files of bench/deconv_models.py's generator and U-Net against fp32
and onnxruntime's own `quantize_static` (bench/qs_static.py), in one process: 1-thread
latency (batch 1, medians of 40 alternating rounds), output error on the held-out inputs,
file size. Ours is converted here with the CLI's defaults (`--bits 8 --act-bits 8
--runtime onnxruntime`).

    python bench/deconv_models.py DIR && python bench/deconv_deploy.py DIR
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from qs_static import quantize_static  # noqa: E402

from onnx_obc import convert  # noqa: E402


def main(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("gen", "unet"):
            src = str(folder / f"{name}_ts.onnx")
            cal = dict(np.load(folder / f"{name}.calib.npz"))
            ev = np.load(folder / f"{name}.eval.npz")["x"]
            paths = {"fp32": src, "ours": f"{tmp}/{name}_ours.onnx",
                     "quantize_static": f"{tmp}/{name}_qs.onnx"}
            convert(src, paths["ours"], calib=cal, bits=8, act_bits=8, runtime="onnxruntime",
                    progress=False)
            quantize_static(src, paths["quantize_static"], cal, onnx.load(src))
            sess = {}
            for k, p in paths.items():
                o = ort.SessionOptions()
                o.intra_op_num_threads = 1
                sess[k] = ort.InferenceSession(p, o, providers=["CPUExecutionProvider"])
            ys = {k: np.concatenate([s.run(None, {"x": ev[i:i + 1]})[0]
                                     for i in range(len(ev))]) for k, s in sess.items()}
            times: dict[str, list[float]] = {k: [] for k in sess}
            for _ in range(40):
                for k, s in sess.items():
                    t = time.perf_counter()
                    s.run(None, {"x": ev[:1]})
                    times[k].append(time.perf_counter() - t)
            base = statistics.median(times["fp32"])
            for k, p in paths.items():
                ms = statistics.median(times[k])
                err = np.linalg.norm(ys[k] - ys["fp32"]) / np.linalg.norm(ys["fp32"])
                print(f"{name:5s} {k:16s} {ms * 1e3:8.3f} ms {ms / base:6.3f}x fp32  error "
                      f"{err:.4f}  {os.path.getsize(p) / 1e6:5.2f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/deconv"))
