"""refs.Captured: the in-sample check's dense outputs kept from the capture's runs, so that
the verification runs the dense model on the first batch only, with the same fidelity."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc import convert, pipeline
from onnx_obc.refs import Captured

from . import builders as b


def test_samples_are_cut_on_their_axis_and_restacked_as_a_run() -> None:
    rng = np.random.default_rng(0)
    rows = np.array([1, 2, 5, 6, 7])  # the check's samples among 8 captured in runs of 4
    c = Captured(rows, ["logits", "ctc"])
    runs = [{"logits": rng.standard_normal((4, 3)).astype(np.float32),
             "ctc": rng.standard_normal((6, 4, 5)).astype(np.float32)} for _ in range(2)]
    for k, acts in enumerate(runs):
        c.add(acts, 4 * k, 4)
    assert c.axes == [0, 1] and not c.dropped  # [T, N, C]: the samples on axis 1
    got = c.batch(1, 3)  # check positions 1-3 = samples 2, 5, 6
    np.testing.assert_array_equal(got[0], np.concatenate([runs[0]["logits"][2:3],
                                                          runs[1]["logits"][1:3]]))
    np.testing.assert_array_equal(got[1], np.concatenate([runs[0]["ctc"][:, 2:3],
                                                          runs[1]["ctc"][:, 1:3]], axis=1))
    assert c.batch(3, 3) is None  # past the check's end: the model runs


def test_outputs_without_a_sample_axis_or_over_the_budget_are_not_kept() -> None:
    c = Captured(np.arange(4), ["y"])
    c.add({"y": np.zeros((3, 5), np.float32)}, 0, 4)  # no axis of 4
    assert c.dropped and c.batch(0, 1) is None
    c = Captured(np.arange(4), ["y"], budget=100)
    c.add({"y": np.zeros((4, 10), np.float32)}, 0, 4)  # 160 bytes
    assert c.dropped and not c.per
    c = Captured(np.arange(4), ["y"])
    c.add({"other": np.zeros((4, 2))}, 0, 4)  # another group's run: nothing to take
    assert not c.dropped and not c.per


def test_matches_wants_the_same_shapes_and_values() -> None:
    y = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert Captured.matches([y], [y + 1e-6])
    assert not Captured.matches([y], [y * 1.01])
    assert not Captured.matches([y.reshape(4, 3)], [y])


def _npz(model, tmp_path) -> str:
    """80 calibration samples in an .npz (an array source: the check's rows are known)."""
    path = tmp_path / "calib.npz"
    np.savez(path, **b.feeds(model, 80, seed=4))
    return str(path)


@pytest.mark.parametrize("runtime", ["tensorrt", "onnxruntime"])
def test_the_verification_reuses_them_with_the_same_fidelity(monkeypatch, tmp_path,
                                                             runtime) -> None:
    """80 calibration samples (the in-sample check: a seeded 64 of them): the same fidelity
    with and without the kept outputs; with them, the dense model's outputs are compared on
    the check's first batch and taken from the capture on its other seven."""
    model = b.cnn()
    calib = _npz(model, tmp_path)
    used: list[int] = []
    batch = Captured.batch

    def counted(self, start, n):
        out = batch(self, start, n)
        used.append(out is not None)
        return out
    monkeypatch.setattr(Captured, "batch", counted)
    runs = {}
    for keep in (True, False):
        if not keep:
            monkeypatch.setattr(pipeline, "_captured", lambda *a: None)
        r = convert(model, None, calib=calib, bits=8, act_bits=8, runtime=runtime, holdout=0.0,
                    progress=False)
        runs[keep] = {s: {k: f.rel_error for k, f in v.items()}
                      for s, v in r.report.fidelity.items()}
    assert runs[True].keys() == runs[False].keys()
    for s, v in runs[False].items():
        for k, err in v.items():
            for n, e in err.items():
                assert runs[True][s][k][n] == pytest.approx(e, rel=1e-4, abs=1e-7)
    assert sum(used) >= 8 and used[:8] == [True] * 8


def test_a_mismatch_runs_the_dense_model_on_every_batch(monkeypatch, tmp_path) -> None:
    """Kept outputs that do not match the first batch's run are not used."""
    model = b.cnn()
    calib = _npz(model, tmp_path)
    add = Captured.add

    def skewed(self, acts, start, samples):
        add(self, {k: v * 1.5 for k, v in acts.items()}, start, samples)
    monkeypatch.setattr(Captured, "add", skewed)
    compared: list[bool] = []
    matches = Captured.matches
    monkeypatch.setattr(Captured, "matches",
                        staticmethod(lambda a, c: compared.append(matches(a, c)) or False))
    skew = convert(model, None, calib=calib, bits=8, act_bits=8, holdout=0.0, progress=False)
    monkeypatch.setattr(pipeline, "_captured", lambda *a: None)
    plain = convert(model, None, calib=calib, bits=8, act_bits=8, holdout=0.0, progress=False)
    assert compared == [False]
    for s, v in plain.report.fidelity.items():
        for k, f in v.items():
            assert skew.report.fidelity[s][k].rel_error == f.rel_error
