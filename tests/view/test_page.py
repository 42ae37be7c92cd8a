"""view/page.py without matplotlib: the page's fidelity table reads each model's error (a
decoder's KV-cache outputs aside, and says so)."""

from __future__ import annotations

import pytest

from onnx_obc.fidelity import Fidelity
from onnx_obc.report import Report

pytest.importorskip("matplotlib")  # view/page.py reads view/figure.py's level names
from onnx_obc.view.page import render  # noqa: E402


def _report(fid: dict) -> Report:
    return Report(model="m.onnx", output=None, config={}, device="cpu", calibration={},
                  fidelity={"eval": fid})


def test_the_page_says_which_outputs_a_decoders_error_leaves_aside():
    out = ("logits", "present.0.key")
    fid = {"dense": Fidelity(8, dict.fromkeys(out, 0.0), aside=out[1:]),
           "compressed": Fidelity(8, {"logits": 0.02, "present.0.key": 0.09}, aside=out[1:])}
    page = render(_report(fid), b"")
    assert '<td>compressed</td><td class="n">0.02</td>' in page
    assert "but the 1 KV-cache outputs (present.0.key); each output's in the JSON" in page
    plain = {k: Fidelity(8, {"y": e}) for k, e in (("dense", 0.0), ("compressed", 0.05))}
    page = render(_report(plain), b"")
    assert '<td class="n">0.05</td>' in page and "KV-cache" not in page
