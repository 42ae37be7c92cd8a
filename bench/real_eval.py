"""Character accuracy of an OCR recognizer (ddddocr's common.onnx, beta charset) on the
rendered lines of bench/real/calib.npz (or --data): 1 - edit distance / length, case-folded,
as ddddocr decodes (argmax of the [T, 1, C] logits, CTC collapse, blank 0); and fidelity
to the first model given (the dense one): relative logit error, per-frame argmax agreement
and the share of lines read identically.

    python bench/real_eval.py bench/real/ddddocr/common.onnx [other.onnx ...]"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np



def edit(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def read(path: str, x: np.ndarray, charset: list[str]) -> tuple[list[str], list[np.ndarray]]:
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out, logits = [], []
    for i in range(len(x)):
        y = s.run(None, {"input1": x[i:i + 1]})[0]
        logits.append(y)
        idx = (y.argmax(axis=-1) if y.ndim == 3 else y).reshape(-1)  # [T, 1, C] logits
        chars, prev = [], None
        for k in idx:
            if k != prev and k != 0:
                chars.append(charset[int(k)])
            prev = k
        out.append("".join(chars))
    return out, logits


def main() -> None:
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "charsets", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 "real/ddddocr/charsets.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    CHARSET_BETA = mod.CHARSET_BETA
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="bench/real/eval.npz")
    a = ap.parse_args()
    d = np.load(a.data)
    x, texts = d["input1"], [str(t) for t in d["texts"]]
    ref = None
    for m in a.models:
        got, logits = read(m, x, CHARSET_BETA)
        if ref is None:
            ref, ref_text = logits, got  # the first model is the reference (dense)
        rel = np.mean([np.linalg.norm(y - y0) / np.linalg.norm(y0) for y, y0 in zip(logits, ref)])
        agree = np.mean(np.concatenate([(y.argmax(-1) == y0.argmax(-1)).ravel()
                                        for y, y0 in zip(logits, ref)]))
        same = np.mean([g == t for g, t in zip(got, ref_text)])
        err = sum(edit(g.lower(), t.lower()) for g, t in zip(got, texts))
        acc = 1 - err / sum(len(t) for t in texts)
        exact = np.mean([g.lower() == t.lower() for g, t in zip(got, texts)])
        print(f"{m}: char acc {acc:.4f}, line acc {exact:.4f} ({len(texts)} lines); vs the "
              f"first model: rel. logit error {rel:.4f}, frame argmax agree {agree:.4f}, "
              f"same text {same:.4f}")


if __name__ == "__main__":
    main()
