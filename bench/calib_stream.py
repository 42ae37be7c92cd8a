"""Calibration that streams: peak memory against the number of samples, images of several
sizes on a model with symbolic H and W, and an image directory from the CLI (prints a
table; asserts nothing).

    python bench/calib_stream.py [--big 10000] [--small 256] [--side 64]

Every case runs in a child process of its own and reports that process's peak RSS
(getrusage ru_maxrss), so cases cannot share or hide memory:

    digits   models/digits_cnn.onnx compressed (--method gptq, 50%) from a function returning
             a fresh generator of noisy digits (the shipped calibration digits plus noise):
             --small vs --big samples
    images   the same with a Conv net with symbolic H/W (tests/calib/models.dynamic_cnn) on
             3 x side x side images (48 KB each at side 64), where holding --big samples
             would take 490 MB: --small vs --big streamed, and --big from a one-shot
             generator (held in memory: the control that shows the measure sees the data)
    sizes    the symbolic-H/W net calibrated on images of three sizes (shape-grouped batches)
    cli      `onnx-obc compress` on a directory of PNGs of three sizes with
             --calib-preprocess resize=...,mean=...,std=...,layout=nchw
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SIZES = [(64, 64), (80, 112), (97, 71)]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _digits(n: int):
    base = np.load(ROOT / "models" / "digits_cnn.calib.npz")["input"]

    def fresh():
        rng = np.random.default_rng(0)
        for i in range(n):
            x = base[i % len(base)] + 0.1 * rng.standard_normal(base.shape[1:])
            yield {"input": x[None].astype(np.float32)}
    return fresh


def _images(n: int, side: int, sizes: list[tuple[int, int]] | None = None):
    def fresh():
        rng = np.random.default_rng(0)
        for i in range(n):
            h, w = sizes[i % len(sizes)] if sizes else (side, side)
            yield {"x": rng.standard_normal((1, 3, h, w)).astype(np.float32)}
    return fresh


def child(case: str, n: int, side: int) -> dict:
    from onnx_obc import convert
    from tests.calib import models

    t = time.perf_counter()
    opts = dict(sparsity=0.5, method="gptq", progress=False, compare_baseline=False,
                batch_size=32)
    if case == "digits":
        res = convert(ROOT / "models" / "digits_cnn.onnx", None, calib=_digits(n), **opts)
    elif case in ("images", "images-held"):
        src = _images(n, side)
        res = convert(models.dynamic_cnn(), None, calib=src() if case == "images-held" else src,
                      **opts)
    elif case == "sizes":
        res = convert(models.dynamic_cnn(), None, calib=_images(n, side, SIZES), **opts)
    else:
        raise SystemExit(f"unknown case {case}")
    cal = res.report.calibration
    return {"case": case, "n": n, "seconds": time.perf_counter() - t, "peak_mb": _peak_mb(),
            "read": cal["read"], "shapes": cal["shapes"], "samples": cal["samples"]}


def run_child(case: str, n: int, side: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", case, str(n), str(side)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cli(n: int) -> dict:
    """A directory of n PNGs of three sizes, compressed from the CLI (its own process)."""
    from PIL import Image

    from tests.calib import models
    import onnx

    with tempfile.TemporaryDirectory(prefix="calib-stream-") as tmp:
        d = Path(tmp) / "imgs"
        d.mkdir()
        rng = np.random.default_rng(0)
        for i in range(n):
            h, w = SIZES[i % 3]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                d / f"{i:05d}.png")
        onnx.save(models.dynamic_cnn(), Path(tmp) / "m.onnx")
        cmd = [sys.executable, "-c",
               "import resource, sys; from onnx_obc.cli import main\n"
               "try:\n    main()\nfinally:\n"
               "    print('PEAK', int(open('/proc/self/status').read()"
               ".split('VmHWM:')[1].split()[0]) / 1024)",  # the child's own (peakmem.py)
               "compress", str(Path(tmp) / "m.onnx"), str(Path(tmp) / "o.onnx"), "--sparsity",
               "0.5", "--method", "gptq", "--calib", str(d), "--calib-preprocess",
               "resize=72,mean=0.485:0.456:0.406,std=0.229:0.224:0.225,layout=nchw", "-q",
               "--report", str(Path(tmp) / "r.json")]
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        secs = time.perf_counter() - t
        if out.returncode:
            raise SystemExit(out.stdout + out.stderr)
        peak = float(out.stdout.split("PEAK")[-1])
        cal = json.loads((Path(tmp) / "r.json").read_text())["calibration"]
        return {"case": "cli", "n": n, "seconds": secs, "peak_mb": peak, "read": cal["read"],
                "shapes": cal["shapes"], "samples": cal["samples"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=10000)
    ap.add_argument("--small", type=int, default=256)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--child", nargs=3, metavar=("CASE", "N", "SIDE"))
    args = ap.parse_args()
    if args.child:
        case, n, side = args.child
        print(json.dumps(child(case, int(n), int(side))))
        return
    cases = [("digits", args.small), ("digits", args.big), ("images", args.small),
             ("images", args.big), ("images-held", args.big), ("sizes", 300), ("cli", 60)]
    rows = []
    for case, n in cases:  # each row as it comes (the big cases take minutes)
        rows.append(run_cli(n) if case == "cli" else run_child(case, n, args.side))
        print(json.dumps(rows[-1]), flush=True)
    print(f"{'case':<12} {'samples':>8} {'fit':>6} {'shapes':>6} {'peak MB':>8} {'wall s':>7}  read")
    for r in rows:
        print(f"{r['case']:<12} {r['n']:>8} {r['samples']:>6} {r['shapes']:>6} "
              f"{r['peak_mb']:>8.0f} {r['seconds']:>7.1f}  {r['read']}")
    for case in ("digits", "images"):
        small, big = (r for r in rows if r["case"] == case)
        print(f"{case}: peak memory {big['n']} / {small['n']} samples = "
              f"{big['peak_mb'] / small['peak_mb']:.3f}x (target <= 1.2x)")
    held = next(r for r in rows if r["case"] == "images-held")
    small = next(r for r in rows if r["case"] == "images")
    print(f"images held in memory (one-shot generator), {held['n']} samples: "
          f"{held['peak_mb'] / small['peak_mb']:.2f}x the streamed {small['n']}-sample run")


if __name__ == "__main__":
    main()
