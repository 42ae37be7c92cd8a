"""`--allocate auto`'s model-level check (allocation/guard.py): the DP's levels against
uniform ones, both solved from the same Hessians, kept by the measured output error."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from onnx_obc import convert, verify
from onnx_obc.allocation import guard

from ..fakes import fixed_errors

MODELS = Path(__file__).resolve().parents[2] / "models"


def _run(**kw):
    return convert(MODELS / "digits_vit.onnx", None, calib=MODELS / "digits_vit.calib.npz",
                   progress=False, device="cpu", compare_baseline=False, **kw)


def _weights(res) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}


def _same(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def _fixed(monkeypatch, errors: dict[str, float]) -> None:
    """The check's verification with a fixed error per variant ("dp", "uniform")."""
    monkeypatch.setattr(verify, "measure", fixed_errors(verify.measure, errors))


@pytest.mark.parametrize("dp_err, uni_err, kept", [
    (0.10, 0.05, "uniform"),  # half the error: uniform
    (0.10, 0.0979, "uniform"),  # just over the margin
    (0.10, 0.0981, "dp"),  # within the 2% margin: the DP stays
    (0.05, 0.10, "dp"),
])
def test_the_default_keeps_the_better_model_of_the_two(monkeypatch, dp_err, uni_err, kept):
    """With the errors fixed, the default run's model is the explicit `--allocate dp` or
    `--allocate uniform` run's, weight for weight (the uniform solve from the copied
    Hessians is the uniform run's solve), and the note gives both errors."""
    dp, uni = _run(sparsity=0.6, allocate="dp"), _run(sparsity=0.6, allocate="uniform")
    _fixed(monkeypatch, {"dp": dp_err, "uniform": uni_err})
    auto = _run(sparsity=0.6)
    assert _same(auto, uni if kept == "uniform" else dp)
    assert not _same(dp, uni)  # the two differ, so the check chose
    (note,) = [n for n in auto.report.notes if n.startswith("allocation (--allocate auto)")]
    assert f"{dp_err:.4g} with the DP's levels, {uni_err:.4g} uniform: kept " in note
    assert ("kept uniform" in note) == (kept == "uniform")
    assert bool(auto.report.profile) == (kept == "dp")  # the non-uniform profile, or none


def test_asked_for_dp_and_sequential_runs_are_not_checked(monkeypatch):
    """`--allocate dp` keeps the DP without a uniform solve; so does a run whose Hessians
    would not fit twice."""
    _fixed(monkeypatch, {"dp": 0.5, "uniform": 0.01})
    dp = _run(sparsity=0.6, allocate="dp")
    assert not [n for n in dp.report.notes if n.startswith("allocation (")]
    assert dp.report.profile

    class Tight:
        hessian_total, budget_bytes = 100, 200
    cfg = type("C", (), {"_alloc_auto": object(), "alloc": type("A", (), {"mode": "dp"}),
                         "run": type("R", (), {"sequential": False})})
    assert guard.spare({"w": object()}, cfg, Tight()) is None
    assert guard.applies(cfg)


def test_the_check_measured(monkeypatch):
    """No fixed figures: the choice is the rule applied to the two measured errors."""
    auto = _run(sparsity=0.7)
    (note,) = [n for n in auto.report.notes if n.startswith("allocation (--allocate auto)")]
    dp_err, uni_err = (float(x) for x in re.search(
        r"output error on [^0-9]*([0-9.e+-]+) with the DP's levels, ([0-9.e+-]+) uniform",
        note).groups())
    assert ("kept uniform" in note) == (uni_err < (1 - guard.MARGIN) * dp_err)
    assert _same(auto, _run(sparsity=0.7, allocate="uniform" if "kept uniform" in note
                            else "dp"))


def test_spare_copies_are_independent():
    """A solve spends its accumulators: the copies keep their own sums."""
    from onnx_obc.hessian import HessianAccumulator

    acc = HessianAccumulator(1, 4, np)
    acc.add(np.arange(8, dtype=np.float64).reshape(1, 4, 2))
    cfg = type("C", (), {"_alloc_auto": object(), "alloc": type("A", (), {"mode": "dp"}),
                         "run": type("R", (), {"sequential": False})})
    copy = guard.spare({"w": acc}, cfg, None)["w"]
    total = acc.total.copy()
    assert copy is not acc and np.array_equal(copy.total, total) and copy.samples == 0
    acc.add(np.ones((1, 4, 2)))
    acc.count(1)
    assert np.array_equal(copy.total, total) and copy.samples == 0 and acc.samples == 1
