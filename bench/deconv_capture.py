"""A ConvTranspose's Hessian: by output phase (deconv.phase_columns, what a run does) against
the zero-filled Conv's columns (deconv.full_columns, the tests' oracle), on the shapes real
up-samplers have. Both sums in one process, alternating, medians of --reps; the largest
relative difference between the two H's is printed beside the times.

    python bench/deconv_capture.py [--reps 5] [--samples 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnx_obc import deconv  # noqa: E402
from onnx_obc.hessian import HessianAccumulator  # noqa: E402
from onnx_obc.layers import find_layers  # noqa: E402
from tests import builders as b  # noqa: E402

SHAPES = {  # name: builders.conv_transpose options (input spatial size, channels in / out)
    "U-Net up 2x2 s2, 64->32 @ 32x32": dict(c_in=64, c_out=32, kernel=2, strides=[2, 2],
                                             spatial=32),
    "DCGAN 4x4 s2 p1, 128->64 @ 16x16": dict(c_in=128, c_out=64, kernel=4, strides=[2, 2],
                                              pads=[1, 1, 1, 1], spatial=16),
    "FSRCNN 9x9 s3, 56->1 @ 32x32": dict(c_in=56, c_out=1, kernel=9, strides=[3, 3],
                                          pads=[4, 4, 4, 4], output_padding=[2, 2],
                                          spatial=32),
    "DBNet 2x2 s2, 24->24 @ 80x80": dict(c_in=24, c_out=24, kernel=2, strides=[2, 2],
                                          spatial=80),
}


def _hessian(L, x: np.ndarray, phases: bool) -> tuple[np.ndarray, float]:
    (u,) = L.uses
    acc = HessianAccumulator(1, L.matrix_shape[2], np)
    t = time.perf_counter()
    if phases:
        for rows, X in deconv.phase_columns(u, x, 1 << 28, np.float64):
            acc.add(X, rows=rows)
    else:
        for X in deconv.full_columns(u, x, 1 << 28, np.float64):
            acc.add(X)
    return acc.total, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args()
    print(f"{'layer':36s} {'d':>6} {'phases s':>9} {'zero-filled s':>13} {'ratio':>7} "
          f"{'max rel diff':>12}")
    for name, opts in SHAPES.items():
        model = b.conv_transpose(**opts)
        (L,), _ = find_layers(model)
        x = b.feeds(model, args.samples, 0)["x"]
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.reps):
            for phases in (True, False):  # alternating
                H, s = _hessian(L, x, phases)
                times[phases].append(s)
                if phases:
                    Hp = H
                else:
                    Hf = H
        diff = float(np.abs(Hp - Hf).max() / np.abs(Hf).max())
        a, z = statistics.median(times[True]), statistics.median(times[False])
        print(f"{name:36s} {L.matrix_shape[2]:6d} {a:9.3f} {z:13.3f} {z / a:7.1f} {diff:12.1e}")


if __name__ == "__main__":
    main()
