"""The whole job on NumPy and on CuPy: same masks? same losses? how much faster?

    python bench/device_parity.py [--fake] [--bits N] [model.onnx calib.npz ...]

Default: every shipped model in models/ (and bench/synthetic/ocr_like.onnx when present).
Per model: per-layer mask agreement between the two devices, the largest relative loss
difference, and the solve/total seconds on each (prints figures; asserts nothing).
Default job: 50% sparsity; --bits N quantizes instead (N bits, OBQ; "same mask" then compares
the written integer codes).
--fake: the strict fake device of the tests (tests/fakedev/fakecupy.py) stands in for the GPU,
to check this script and the device path without one (its seconds mean nothing).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_obc import backend, convert  # noqa: E402

backend.DEVICE_MIN_COLUMNS = 0  # every layer solved on the device: the CuPy solver itself


def pairs() -> list[tuple[Path, Path]]:
    a = [x for i, x in enumerate(sys.argv[1:], 1)
         if x not in ("--fake", "--bits") and sys.argv[i - 1] != "--bits"]
    if a:
        return [(Path(a[i]), Path(a[i + 1])) for i in range(0, len(a), 2)]
    found = [(p, p.with_name(p.name[:-5] + ".calib.npz"))
             for p in sorted((ROOT / "models").glob("*.onnx"))]
    syn = ROOT / "bench" / "synthetic" / "ocr_like.onnx"
    if syn.exists():
        found.append((syn, syn.with_name("ocr_like.calib.npz")))
    return found


def weights(model) -> dict[str, np.ndarray]:
    """Every constant tensor by name: initializers and Constant nodes (Paddle exports)."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def gpu() -> contextlib.AbstractContextManager:
    if "--fake" not in sys.argv:
        return contextlib.nullcontext()
    from onnx_obc.backend import stand_in_device
    from tests.fakedev import fakecupy

    return stand_in_device("fake", fakecupy, fakecupy.ndarray)


def main() -> None:
    with gpu():
        run()


def job() -> dict:
    if "--bits" in sys.argv:
        return {"bits": int(sys.argv[sys.argv.index("--bits") + 1])}
    return {"sparsity": 0.5}


def run() -> None:
    for model, calib in pairs():
        runs = {}
        for device in ("cpu", "cuda"):
            runs[device] = convert(model, None, calib=calib, device=device, progress=False,
                                   compare_baseline=False, **job())
        cpu, gpu = runs["cpu"], runs["cuda"]
        wc, wg = weights(cpu.model), weights(gpu.model)
        print(f"\n=== {model.name}: {gpu.report.device} vs {cpu.report.device} ===")
        print(f"{'layer':<16} {'W':>10} {'same mask':>10} {'loss rel diff':>14} "
              f"{'cpu s':>7} {'gpu s':>7}")
        worst_mask, worst_loss = 1.0, 0.0
        for a, b in zip(cpu.report.layers, gpu.report.layers):
            w = a.weight + ("_quantized" if "--bits" in sys.argv else "")  # its codes
            if w not in wc or w not in wg:  # e.g. MatMulNBits' packed codes
                same = float("nan")
            elif "--bits" in sys.argv:
                same = float((wc[w] == wg[w]).mean())
            else:
                same = float(((wc[w] == 0) == (wg[w] == 0)).mean())
            rel = abs(a.loss - b.loss) / max(abs(a.loss), 1e-30)
            worst_mask = min(worst_mask, same) if same == same else worst_mask
            worst_loss = max(worst_loss, rel)
            print(f"{a.name[:16]:<16} {f'{a.rows}x{a.cols}':>10} {same:>10.4%} {rel:>14.2e} "
                  f"{a.seconds:>7.2f} {b.seconds:>7.2f}")
        sc, sg = cpu.report.seconds, gpu.report.seconds
        print(f"worst mask agreement {worst_mask:.4%}, worst loss rel diff {worst_loss:.2e}; "
              f"solve {sc['solve']:.2f}s cpu vs {sg['solve']:.2f}s gpu "
              f"({sc['solve'] / max(sg['solve'], 1e-9):.1f}x); capture {sc['capture']:.2f}s vs "
              f"{sg['capture']:.2f}s; total {sc['total']:.2f}s vs {sg['total']:.2f}s")


if __name__ == "__main__":
    main()
