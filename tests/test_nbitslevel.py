"""MatMulNBits' accuracy_level decided by measurement (onnx_obc/nbitslevel.py): level 4 kept
where it is at most 0.95x level 0's latency and its output error rises by at most 2% plus
half the latency share it saves, each side of both limits (the timer's figures fixed: timed tests would be noise); nothing measured where
the level is given, the weights are 8-bit or the target is tensorrt; the note, the written
file's level and the pinned option, which repeats the file byte for byte."""

from __future__ import annotations

import onnx
import pytest

from onnx_obc import convert, nbitslevel
from onnx_obc.channels import timing
from onnx_obc.correct import MARGIN

from . import builders as b


def fixed_timer(ratio: float):
    """An ort_timer whose level-4 model takes `ratio` x the level-0 model's 10 ms (the
    report's latency line, the input model against the written one, reads the same)."""
    def make(*args, **kwargs):
        return lambda models, feed: [0.010, 0.010 * ratio]
    return make


def level4_errors(monkeypatch, factor: float) -> None:
    """Level 4's measured output error set to `factor` x level 0's (its real one on these
    tiny random layers, int8 activations per block of 32, is 8% higher: 0.0190 / 0.0175)."""
    real = nbitslevel.variant

    def variant(dense, key, model, *args):
        fid, err = real(dense, "level 0", nbitslevel.with_level(model, 0), *args)
        return fid, err * (factor if key == "level 4" else 1.0)

    monkeypatch.setattr(nbitslevel, "variant", variant)


def not_measured(*args):
    raise AssertionError("nothing to measure")


def levels(model: onnx.ModelProto) -> set[int]:
    return {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
            if a.name == "accuracy_level"}


def run(saved, **opts):
    path, data = saved(b.mlp((32, 64, 16)), n=40)
    return convert(str(path), calib=str(data), bits=4, runtime="onnxruntime", progress=False,
                   sequential=False, **opts)


TRADE = nbitslevel.TRADE


@pytest.mark.parametrize("ratio,err4,level", [
    (0.70, 1.0, 4), (0.94, 1.0 + MARGIN / 2, 4), (0.96, 1.0, 0),
    (0.70, 0.99 * (1 + MARGIN + 0.3 * TRADE), 4), (0.70, 1.01 * (1 + MARGIN + 0.3 * TRADE), 0),
    (0.94, 1.01 * (1 + MARGIN + 0.06 * TRADE), 0)])
def test_level_4_kept_only_faster_and_as_accurate(saved, monkeypatch, ratio, err4, level):
    monkeypatch.setattr(timing, "ort_timer", fixed_timer(ratio))
    level4_errors(monkeypatch, err4)
    r = run(saved)
    assert levels(r.model) == {level}
    note = next(n for n in r.report.notes if n.startswith("MatMulNBits accuracy_level (auto)"))
    assert note.split(": ", 1)[1].startswith(f"{level} (")
    assert ("output error" in note) == (ratio <= nbitslevel.FASTER)  # too slow: not verified
    assert f"--accuracy-level {level}" in r.report.pinned["flags"]
    assert r.report.config["export"]["accuracy_level"] == level


@pytest.mark.parametrize("opts", [{"accuracy_level": 0}, {"accuracy_level": 4},
                                  {"matmul_nbits": False}])
def test_nothing_measured_where_the_level_is_given_or_no_matmulnbits(saved, monkeypatch,
                                                                     opts):
    monkeypatch.setattr(nbitslevel, "_chosen", not_measured)
    r = run(saved, **opts)
    assert not any("accuracy_level" in n for n in r.report.notes)
    assert levels(r.model) == ({opts["accuracy_level"]} if "accuracy_level" in opts else set())


def test_eight_bit_and_tensorrt_runs_measure_nothing(saved, monkeypatch):
    monkeypatch.setattr(nbitslevel, "_chosen", not_measured)
    path, data = saved(b.mlp((32, 64, 16)), n=40)
    for opts in ({"bits": 8, "runtime": "onnxruntime"}, {"bits": 4, "sequential": False}):
        r = convert(str(path), calib=str(data), progress=False, **opts)
        assert not any("accuracy_level" in n for n in r.report.notes)


def test_the_pinned_level_repeats_the_file(saved, monkeypatch, tmp_path):
    monkeypatch.setattr(timing, "ort_timer", fixed_timer(0.7))
    level4_errors(monkeypatch, 1.0)
    path, data = saved(b.mlp((32, 64, 16)), n=40)
    opts = dict(calib=str(data), bits=4, runtime="onnxruntime", progress=False,
                sequential=False)
    auto = convert(str(path), tmp_path / "a.onnx", **opts)
    assert auto.report.pinned["flags"] == "--accuracy-level 4"
    monkeypatch.setattr(nbitslevel, "_chosen", not_measured)
    convert(str(path), tmp_path / "b.onnx", accuracy_level=4, **opts)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
