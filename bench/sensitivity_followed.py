"""Does `--sensitivity`'s suggestion help when followed? Judged on eval samples no ranking read.

    python bench/sensitivity_followed.py --models lcnet_orient,ppocr_cls [--args "--bits 4"]
        [--trees /tmp/before,.] [--one-shot] [--random 3] [--out bench/results/followed.json]

Per model (bench/real/M.onnx with M.calib.npz and M.eval.npz; `llama` = a bench/gated_llm.py
build in $LLAMA_DIR): the eval set is split into its first HEAD samples (what a ranking may
read: the in-sample check's 64) and the rest, the judge. Each ranking is a CLI run,
`onnx-obc M OUT --calib C --eval HEAD ARGS --sensitivity`, one per `--trees` entry (each
checkout's onnx_obc on PYTHONPATH, e.g. a copy of an older commit: `git archive C | tar -x
-C DIR`) and, with `--one-shot`, the last tree's with `--one-shot` added; then each suggestion
is followed, `onnx-obc M OUT --calib C --eval REST ARGS --exclude ...` with the last tree,
beside nothing excluded and `--random` draws of as many layers at random (the spread any
exclusion moves the error by). Prints the judged relative output error (the report's
`error`: its largest output's, a decoder's KV cache aside) per run; one CLI process each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEAD = 64  # eval samples a ranking reads: calib.plan.IN_SAMPLE_CHECK


def _paths(m: str) -> tuple[str, str, str]:
    if m == "llama":
        d = Path(os.environ.get("LLAMA_DIR", "/tmp/gl2"))
        return str(d / "llama.onnx"), str(d / "calib.npz"), str(d / "eval.npz")
    r = ROOT / "bench" / "real"
    return str(r / f"{m}.onnx"), str(r / f"{m}.calib.npz"), str(r / f"{m}.eval.npz")


def _cli(tree: str, model: str, calib: str, ev: str, args: list[str], tmp: Path, tag: str
         ) -> dict:
    """One CLI run of `tree`'s onnx_obc; its JSON report."""
    out, rep = tmp / f"{tag}.onnx", tmp / f"{tag}.json"
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    cmd = [sys.executable, "-m", "onnx_obc", model, str(out), "--calib", calib, "--eval", ev,
           *args, "--report", str(rep), "-q"]
    done = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(shlex.quote, cmd))} failed:\n{done.stderr[-2000:]}")
    return json.loads(rep.read_text())


def _split(ev: str, tmp: Path) -> tuple[str, str]:
    d = dict(np.load(ev, allow_pickle=True))
    n = len(next(iter(d.values())))
    if n <= HEAD:
        raise SystemExit(f"{ev}: {n} samples, none left to judge on after the first {HEAD}")
    head, rest = tmp / "head.npz", tmp / "rest.npz"
    np.savez(head, **{k: v[:HEAD] for k, v in d.items()})
    np.savez(rest, **{k: v[HEAD:] for k, v in d.items()})
    return str(head), str(rest)


def follow(m: str, args: list[str], trees: list[str], one_shot: bool, draws: int) -> dict:
    model, calib, ev = _paths(m)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        head, rest = _split(ev, tmp)
        rankings = {f"{Path(tr).resolve().name}": (tr, args) for tr in trees}
        if one_shot:
            rankings[f"{Path(trees[-1]).resolve().name} --one-shot"] = (trees[-1],
                                                                        args + ["--one-shot"])
        picks: dict[str, list[str]] = {"nothing": []}
        layers: list[dict] = []
        for i, (name, (tree, a)) in enumerate(rankings.items()):
            s = _cli(tree, model, calib, head, a + ["--sensitivity"], tmp, f"rank{i}")
            s = s.get("sensitivity") or {}
            picks[name] = [n for x in s.get("layers", []) if x["layer"] in s.get("exclude", [])
                           for n in x["nodes"]]
            layers = layers or s.get("layers", [])
        rng = random.Random(0)
        k = max([len(v) for v in picks.values()] + [1])
        for j in range(draws):
            picks[f"random {j + 1}"] = [n for x in rng.sample(layers, min(k, len(layers)))
                                        for n in x["nodes"]]
        out = {}
        for i, (name, nodes) in enumerate(picks.items()):
            flags = [f for n in nodes for f in ("--exclude", n)]
            r = _cli(trees[-1], model, calib, rest, args + flags, tmp, f"follow{i}")
            err = r["fidelity"]["eval"]["compressed"]["error"]
            out[name] = {"excluded": nodes, "error": err}
            print(f"{m:14s} {name:24s} {err:.4f}  {' '.join(nodes)}", flush=True)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lcnet_orient,ppocr_cls")
    p.add_argument("--args", default="--bits 4")
    p.add_argument("--trees", default=str(ROOT))
    p.add_argument("--one-shot", action="store_true")
    p.add_argument("--random", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "followed.json"))
    a = p.parse_args()
    res = {m: follow(m, shlex.split(a.args), a.trees.split(","), a.one_shot, a.random)
           for m in a.models.split(",")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": a.args, "models": res}, indent=2))


if __name__ == "__main__":
    main()
