"""Host <-> device crossings of every mode, counted on the fake device (no GPU needed).

    python bench/device_crossings.py [--sites]

Runs each mode of tests/fakedev/test_pipeline_on_device.py on its small built model with
the strict fake CuPy (tests/fakedev/fakecupy.py) standing in for the GPU, and prints per
mode: layers solved, copies made by the calibration capture (activations, once per batch
and use), the other copies per layer (weights in, results out, solver index arrays) and the
synchronisations per layer. --sites also lists where each crossing happens.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_obc import convert  # noqa: E402
from onnx_obc.backend import stand_in_device  # noqa: E402
from tests.conftest import save_model_and_data  # noqa: E402
from tests.fakedev import fakecupy as fc  # noqa: E402
from tests.fakedev.conftest import TRANSFERS, sites  # noqa: E402
from tests.fakedev.test_pipeline_on_device import MODES  # noqa: E402


def main() -> None:
    show_sites = "--sites" in sys.argv
    print(f"{'mode':<18} {'layers':>6} {'capture':>8} {'copies/layer':>13} {'syncs/layer':>12}")
    with tempfile.TemporaryDirectory() as tmp, stand_in_device("fake", fc, fc.ndarray):
        for i, (mode, (spec, options)) in enumerate(MODES.items()):
            path, data = save_model_and_data(Path(tmp), spec["model"](), n=24, seed=1,
                                             stem=f"m{i}")
            fc.reset()
            res = convert(path, None, calib=data, progress=False, device="cuda",
                          batch_size=8, **options)
            crossings = sites(TRANSFERS)
            capture = sum(n for s, n in crossings.items() if "onnx_obc/collect.py" in s)
            n = max(1, len(res.report.layers))
            other = sum(fc.COUNTS[k] for k in TRANSFERS) - capture
            print(f"{mode:<18} {n:>6} {capture:>8} {other / n:>13.1f} "
                  f"{fc.COUNTS['sync'] / n:>12.1f}")
            if show_sites:
                for s, k in sites().items():
                    print(f"    {k:5d}  {s}")


if __name__ == "__main__":
    main()
