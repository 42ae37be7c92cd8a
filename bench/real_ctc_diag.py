"""Where compressed CTC recognizers gain or lose text accuracy against the dense model: per
model, the lines split by (dense right / wrong) x (model right / wrong), the edit operations of
the wrong decodes against the label (insertions, deletions, substitutions), and the logit
shifts of the head against dense over the eval frames (blank row, the other rows, the blank
margin = blank - best non-blank), with the frames whose argmax moves blank -> character and
character -> blank.

    python bench/real_ctc_diag.py --model common --eval bench/real/common.eval.npz \\
        --eval bench/real/common.eval2000.npz obc=M1.onnx gptq=M2.onnx [--json out.json]

Diagnostic only (it reads the labels): nothing here selects a compression setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import real_paired  # noqa: E402


def edit_ops(got: str, ref: str) -> tuple[int, int, int]:
    """(insertions, deletions, substitutions) of a minimal edit from ref to got."""
    n, m = len(ref), len(got)
    d = np.zeros((n + 1, m + 1), np.int32)
    d[:, 0], d[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1,
                          d[i - 1, j - 1] + (ref[i - 1] != got[j - 1]))
    ins = dele = sub = 0
    i, j = n, m
    while i or j:
        if i and j and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != got[j - 1]):
            sub += ref[i - 1] != got[j - 1]
            i, j = i - 1, j - 1
        elif j and d[i, j] == d[i, j - 1] + 1:
            ins, j = ins + 1, j - 1
        else:
            dele, i = dele + 1, i - 1
    return ins, dele, sub


def _stats() -> dict:
    return {"cells": np.zeros((2, 2), np.int64), "ops": np.zeros(3, np.int64),
            "ops_fixed": np.zeros(3, np.int64), "ops_broken": np.zeros(3, np.int64),
            "frames": 0, "d_blank": 0.0, "d_other": 0.0, "d_margin": 0.0,
            "blank_to_char": 0, "char_to_blank": 0, "char_to_char": 0,
            "line": {"correct": [], "same": [], "error": []}}


def diagnose(name: str, models: dict[str, str], evals: list[str]) -> dict[str, dict]:
    import onnx
    from deploy import _batches, _session

    cs = json.loads((ROOT / "bench/real/charset.json").read_text())
    proto = onnx.load(str(ROOT / real_paired.DENSE[name]), load_external_data=False)
    sess = {k: _session(p, 1) for k, p in {"dense": str(ROOT / real_paired.DENSE[name]),
                                        **models}.items()}
    out = {k: _stats() for k in sess}
    for path in evals:
        ev = dict(np.load(path))
        texts = [str(t).lower() for t in ev["texts"]]
        i = 0
        for feed in _batches(proto, ev, len(texts)):
            ys = {k: s.run(None, feed)[0] for k, s in sess.items()}
            d = ys["dense"].reshape(ys["dense"].shape[0], -1)  # [T, C], one line
            got = {k: real_paired._decode(name, y, cs)[0] for k, y in ys.items()}
            ref, dense_ok = texts[i], got["dense"] == texts[i]
            da = d.argmax(-1)
            for k, y in ys.items():
                y = y.reshape(d.shape)
                s, ok = out[k], got[k] == ref
                s["cells"][int(dense_ok), int(ok)] += 1
                s["line"]["correct"].append(ok)
                s["line"]["same"].append(got[k] == got["dense"])
                s["line"]["error"].append(float(np.linalg.norm(y - d)
                                                / max(np.linalg.norm(d), 1e-12)))
                ops = np.asarray(edit_ops(got[k], ref))
                s["ops"] += ops
                if dense_ok and not ok:
                    s["ops_broken"] += ops
                if ok and not dense_ok:
                    s["ops_fixed"] += np.asarray(edit_ops(got["dense"], ref))
                dy = y - d
                s["frames"] += len(d)
                s["d_blank"] += float(dy[:, 0].sum())
                s["d_other"] += float(dy[:, 1:].mean(1).sum())
                mq = y[:, 0] - y[:, 1:].max(1)
                md = d[:, 0] - d[:, 1:].max(1)
                s["d_margin"] += float((mq - md).sum())
                ya = y.argmax(-1)
                s["blank_to_char"] += int(((da == 0) & (ya != 0)).sum())
                s["char_to_blank"] += int(((da != 0) & (ya == 0)).sum())
                s["char_to_char"] += int(((da != 0) & (ya != 0) & (da != ya)).sum())
            i += 1
    for s in out.values():
        f = max(s["frames"], 1)
        for key in ("d_blank", "d_other", "d_margin"):
            s[key] /= f
    return out


def summary(res: dict[str, dict]) -> list[str]:
    lines = ["lines: dense right & model wrong (broken) / dense wrong & model right (fixed); "
             "edit ops vs label (ins / del / sub): all wrong lines, broken, fixed (dense's "
             "ops there); per frame vs dense: mean d blank logit, d other logits, d blank "
             "margin; argmax moves blank->char / char->blank / char->char"]
    for k, s in res.items():
        c = s["cells"]
        lines.append(
            f"  {k}: right {c[:, 1].sum()}/{c.sum()}; broken {c[1, 0]}, fixed {c[0, 1]}; "
            f"ops {'/'.join(map(str, s['ops']))}, broken {'/'.join(map(str, s['ops_broken']))}"
            f", fixed {'/'.join(map(str, s['ops_fixed']))}; d blank {s['d_blank']:+.4f}, "
            f"d other {s['d_other']:+.4f}, d margin {s['d_margin']:+.4f}; moves "
            f"{s['blank_to_char']} / {s['char_to_blank']} / {s['char_to_char']} of "
            f"{s['frames']}")
    return lines


def _weight(model, node_name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The (dequantized) weight and bias of the node named `node_name`."""
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)

    def value(name: str) -> np.ndarray | None:
        if name in init:
            return init[name].astype(np.float64)
        n = prod.get(name)
        if n is None or n.op_type != "DequantizeLinear":
            return None
        q, s = init[n.input[0]].astype(np.float64), init[n.input[1]].astype(np.float64)
        z = init[n.input[2]].astype(np.float64) if len(n.input) > 2 and n.input[2] else 0.0
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if s.ndim:
            shape[axis] = -1
        return (q - np.reshape(z, shape) if np.ndim(z) else q - z) * np.reshape(s, shape)

    bias = value(node.input[2]) if len(node.input) > 2 else None
    return value(node.input[1]), bias


def head_shift(models: dict[str, str], evals: list[str], node_name: str, rows: list[int],
               limit: int = 400) -> dict[str, dict]:
    """The head alone on the dense model's head inputs (first `limit` eval lines): per model,
    the mean change of the blank logit, of the `rows` (the charset's captcha characters) and of
    all other rows, and the head's loss tr(dW H dW^T) summed over the blank and `rows`, with H
    from these inputs."""
    import onnx
    from deploy import _batches, _session

    dense = onnx.load(str(ROOT / real_paired.DENSE["common"]))
    node = next(n for n in dense.graph.node if n.name == node_name)
    probe = onnx.ModelProto()
    probe.CopyFrom(dense)
    probe.graph.output.insert(0, onnx.helper.make_tensor_value_info(
        node.input[0], onnx.TensorProto.FLOAT, None))
    sess = _session(probe.SerializeToString())
    xs, seen = [], 0
    for path in evals:
        ev = dict(np.load(path))
        n = min(len(ev["texts"]), limit - seen)
        for feed in _batches(dense, ev, n):
            xs.append(sess.run([node.input[0]], feed)[0].reshape(-1, node_dim(dense, node)))
        seen += n
        if seen >= limit:
            break
    x = np.concatenate(xs).astype(np.float64)
    h = x.T @ x / len(x)
    w0, b0 = _weight(dense, node_name)
    other = np.setdiff1d(np.arange(w0.shape[0]), [0] + rows)
    out = {}
    for k, p in models.items():
        w, b = _weight(onnx.load(p), node_name)
        dw, db = w - w0, (b - b0 if b is not None and b0 is not None else 0.0)
        dy = x @ dw.T + db  # [frames, classes]
        keep = [0] + rows
        loss = float(np.einsum("ri,ij,rj->", dw[keep], h, dw[keep]))
        out[k] = {"frames": len(x), "d_blank": float(dy[:, 0].mean()),
                  "d_chars": float(dy[:, rows].mean()), "d_other": float(dy[:, other].mean()),
                  "d_blank_minus_chars": float((dy[:, 0] - dy[:, rows].mean(1)).mean()),
                  "loss_blank_chars": loss, "loss_blank": float(dw[0] @ h @ dw[0])}
    return out


def node_dim(model, node) -> int:
    from onnx import numpy_helper

    w = next(t for t in model.graph.initializer if t.name == node.input[1])
    return int(numpy_helper.to_array(w).shape[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="common", choices=["common"])
    ap.add_argument("--eval", action="append", required=True)
    ap.add_argument("--json", default=None)
    ap.add_argument("--flags", default=None,
                    help="the per-line arrays as real_paired.py --flags writes them (then "
                         "real_paired.py --model common --load FLAGS prints the paired tests)")
    ap.add_argument("--head", default=None, metavar="NODE",
                    help="only the head NODE's shifts on the dense head inputs (e.g. Gemm_97)")
    ap.add_argument("models", nargs="+", metavar="NAME=PATH")
    a = ap.parse_args()
    models = dict(x.split("=", 1) for x in a.models)
    if a.head:
        cs = json.loads((ROOT / "bench/real/charset.json").read_text())
        alnum = set("abcdefghijklmnopqrstuvwxyz0123456789")
        rows = [i for i, c in enumerate(cs) if i and c.lower() in alnum]
        res = head_shift(models, a.eval, a.head, rows)
        for k, r in res.items():
            print(f"  {k}: " + ", ".join(f"{f} {v:+.4g}" for f, v in r.items()))
        return
    res = diagnose(a.model, models, a.eval)
    print("\n".join(summary(res)))
    lines = {k: {f: np.asarray(v) for f, v in s.pop("line").items()} for k, s in res.items()}
    print("\n".join(real_paired.summary(lines, list(models))))
    if a.flags:
        np.savez(a.flags, **{f"{k}.{f}": v for k, r in lines.items() for f, v in r.items()})
    if a.json:
        Path(a.json).write_text(json.dumps(
            {k: {f: (v.tolist() if isinstance(v, np.ndarray) else v) for f, v in s.items()}
             for k, s in res.items()}, indent=1))


if __name__ == "__main__":
    main()
