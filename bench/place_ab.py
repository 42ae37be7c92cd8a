"""A switch of the onnxruntime target's placement (export/ortplace.JOIN: the Concat grids;
CHAINS: chains of data movement; export/ortswish.SE_GATES: squeeze-excite gates on the codes)
off and on, in one run.

    python bench/place_ab.py [--switch JOIN] [--models common_det,yolov8n,basicpitch]
                             [--all-int] [--rounds 30] [--out bench/results/join_ab.json]

Per model: W8A8 `--runtime onnxruntime --holdout 0` conversions with the switch off and on
(`--all-int`: `--int8-stem --int8-highres` too, so that no float decision differs between
the two), the output error of each against the input model on the first 64 eval samples
(mean and median of ||y - y_dense|| / ||y_dense||, first output), the quantized layers on
integer kernels (the run's fusion check), whether the two files are the same, and the
1-thread latency
of both files on one sample, alternating blocks of runs of about 50 ms (median of --rounds;
channels.timing.ort_timer, as the run's own timings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnx_obc import convert  # noqa: E402
from onnx_obc.channels.timing import ort_timer  # noqa: E402
from onnx_obc.export import ortplace, ortswish  # noqa: E402


def _session(path: str, threads: int) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def _module(switch: str):
    return ortswish if switch == "SE_GATES" else ortplace


def _integer(res) -> str:
    """'x/y': the quantized layers on integer kernels, from the run's fusion check."""
    f = res.report.fusion
    return f"{f.get('integer', '?')}/{f.get('layers', '?')}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--switch", default="JOIN", choices=("JOIN", "CHAINS", "SE_GATES"))
    ap.add_argument("--models", default="common_det,yolov8n,basicpitch")
    ap.add_argument("--all-int", action="store_true")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", default=None, help="default bench/results/<switch>_ab.json")
    args = ap.parse_args()
    out = args.out or str(ROOT / f"bench/results/{args.switch.lower()}_ab.json")
    extra = dict(float_stem=False, float_highres=False) if args.all_int else {}
    rows = []
    for name in args.models.split(","):
        src = str(ROOT / f"bench/real/{name}.onnx")
        files, integer = {}, {}
        for on in (False, True):
            setattr(_module(args.switch), args.switch, on)
            files[on] = f"/tmp/place_ab_{name}_{int(on)}.onnx"
            res = convert(src, files[on], calib=str(ROOT / f"bench/real/{name}.calib.npz"),
                          bits=8, act_bits=8, runtime="onnxruntime", holdout=0,
                          progress=False, **extra)
            integer[on] = _integer(res)
        setattr(_module(args.switch), args.switch, True)
        ev = np.load(ROOT / f"bench/real/{name}.eval.npz")
        dense = _session(src, 2)
        names = [i.name for i in dense.get_inputs()]
        runs = {j: _session(f, 2) for j, f in files.items()}
        errs: dict[bool, list[float]] = {False: [], True: []}
        for i in range(min(64, len(ev[names[0]]))):
            feed = {k: ev[k][i:i + 1] for k in names}
            y = dense.run(None, feed)[0]
            for j, s in runs.items():
                errs[j].append(float(np.linalg.norm(s.run(None, feed)[0] - y)
                                     / np.linalg.norm(y)))
        timer = ort_timer(rounds=args.rounds, seconds=0.0, block=0.05)
        ms = [1e3 * t for t in timer([onnx.load(files[False]), onnx.load(files[True])],
                                       {k: ev[k][:1] for k in names})]
        same = Path(files[False]).read_bytes() == Path(files[True]).read_bytes()
        row = dict(model=name, switch=args.switch, all_int=args.all_int, same_file=same,
                   integer_off=integer[False], integer_on=integer[True], ms_off=ms[0], ms_on=ms[1],
                   ratio=ms[1] / ms[0], **{f"error_{k}": float(np.mean(errs[j]))
                                           for k, j in (("off", False), ("on", True))},
                   **{f"median_{k}": float(np.median(errs[j]))
                      for k, j in (("off", False), ("on", True))})
        rows.append(row)
        print(f"{name}: error mean / median off {row['error_off']:.4f} / "
              f"{row['median_off']:.4f}, on {row['error_on']:.4f} / {row['median_on']:.4f}; "
              f"integer layers {integer[False]} -> {integer[True]}"
              f"{' (the same file)' if same else ''}; "
              f"1 thread {ms[0]:.2f} -> {ms[1]:.2f} ms ({row['ratio']:.3f}x)", flush=True)
        for f in files.values():
            Path(f).unlink(missing_ok=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
