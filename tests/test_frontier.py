"""frontier.py: a sequential run's captures start from the last group's cut instead of the
graph inputs, and give the same model bit for bit as running every prefix again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

import onnx_obc.frontier as F
import onnx_obc.schedule as S
from onnx_obc import convert

MODELS = Path(__file__).resolve().parents[1] / "models"


def _run(name: str, **kw):
    return convert(MODELS / f"{name}.onnx", None, calib=MODELS / f"{name}.calib.npz",
                   progress=False, device="cpu", compare_baseline=False, **kw)


def _same(a, b) -> None:
    for x, y in zip(a.model.graph.initializer, b.model.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(x), numpy_helper.to_array(y))
    assert [r.loss for r in a.report.layers] == [r.loss for r in b.report.layers]


def _counting(monkeypatch) -> list[int]:
    """The node count of every piece model a Frontier runs."""
    sizes: list[int] = []
    piece = F.piece

    def counted(model, nodes, *args):
        sizes.append(len(nodes))
        return piece(model, nodes, *args)

    monkeypatch.setattr(F, "piece", counted)
    return sizes


@pytest.mark.parametrize("name", ["digits_cnn", "digits_vit"])
@pytest.mark.parametrize("options", [dict(bits=4), dict(bits=4, sequential_groups=2),
                                     dict(sparsity=0.5, allocate="uniform", sequential=True)],
                         ids=["per-layer", "groups", "pruned"])
def test_the_frontier_capture_equals_the_full_prefix(name, options, monkeypatch):
    """Per layer (the default below 8 bits), in groups of several layers (a group's later
    layers read what its earlier ones make, which change after the solve: run again next
    time) and pruning: the same weights and losses as the full-prefix captures; every node
    of the two models runs about once, not once per group."""
    sizes = _counting(monkeypatch)
    cut = _run(name, **options)
    pieces = list(sizes)
    monkeypatch.setattr(S, "Frontier", lambda budget: None)
    _same(cut, _run(name, **options))
    nodes = len(cut.model.graph.node)
    assert pieces and sum(pieces) <= 2 * nodes + 4 * len(cut.report.layers)


def test_a_weight_read_before_and_after_another_layer_captures_as_the_full_prefix(
        monkeypatch):
    """Basic Pitch's CQT (one lowpass weight on every octave) crashed the W4 run: A's group
    ran B's node for A's second use and kept nothing of B's input, which B's group then
    wanted (KeyError). Now what is wanted and not kept runs again, and what read B before
    B's solve (u, kept for C) counts as stale after it: the same weights and losses as the
    full-prefix captures."""
    from tests import builders as b

    model = b.shared_weight_chain(d=12)
    run = lambda: convert(model, None, calib=[b.feeds(model, 64, seed=3)],  # noqa: E731
                          progress=False, device="cpu", compare_baseline=False, bits=4)
    sizes = _counting(monkeypatch)
    cut = run()
    assert sizes and [r.name for r in cut.report.layers] == ["mmP", "mmA1, mmA2", "mmB", "mmC"]
    monkeypatch.setattr(S, "Frontier", lambda budget: None)
    _same(cut, run())


def test_a_frontier_over_its_budget_runs_every_prefix_again(monkeypatch):
    """No cut fits the budget: each later group runs from the graph inputs, the same model."""
    made = []

    def tiny(budget):
        made.append(F.Frontier(1, spill=False))
        return made[-1]

    sizes = _counting(monkeypatch)
    _run("digits_cnn", bits=4)
    kept = list(sizes)
    sizes.clear()
    monkeypatch.setattr(S, "Frontier", tiny)
    small = _run("digits_cnn", bits=4)
    assert made[0].states == {} and not made[0].over
    assert sizes == sorted(sizes) and sum(sizes) > sum(kept)  # each prefix from the inputs
    monkeypatch.setattr(S, "Frontier", lambda budget: None)
    _same(small, _run("digits_cnn", bits=4))


def test_a_frontier_over_its_budget_spills_to_disk_and_leaves_nothing(monkeypatch, tmp_path):
    """No cut fits in memory but the disk takes them (PP-PicoDet's stride-4 cuts): the cut
    still moves (each node about once, not every prefix), the same model as the full
    prefixes, and no file or folder left in the spill folder's parent after the run."""
    made = []
    written = []
    put = F.SpillFolder.put

    def tiny(budget):
        made.append(F.Frontier(1, spill=str(tmp_path)))
        return made[-1]

    def counted(self, value):
        written.append(value.nbytes)
        return put(self, value)

    sizes = _counting(monkeypatch)
    monkeypatch.setattr(S, "Frontier", tiny)
    monkeypatch.setattr(F.SpillFolder, "put", counted)
    spilled = _run("digits_cnn", bits=4)
    nodes = len(spilled.model.graph.node)
    assert written and sum(sizes) <= 2 * nodes + 4 * len(spilled.report.layers)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(S, "Frontier", lambda budget: None)
    _same(spilled, _run("digits_cnn", bits=4))


def test_a_frontier_keeps_only_what_a_later_node_reads():
    """x -> a -> b -> c with a skip a -> c: cut at b's input keeps a (read by b and c) and
    not x; the next cut at c's input runs only b and keeps a for c."""
    import onnx
    from onnx import TensorProto, helper

    from onnx_obc.capture import Runtime

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    info = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "g", [info("x", TensorProto.FLOAT, [2, 3])],
                          [info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3) - 5
    batches = [(2, {"x": x[0]}), (2, {"x": x[1]})]
    rt = Runtime.of(["CPUExecutionProvider"])
    fr = F.Frontier(1 << 20)
    got = list(fr.runs("m", model, ["a"], batches, 2, rt))
    fr.commit()
    np.testing.assert_array_equal(got[1][1]["a"], np.maximum(x[1], 0))
    assert set(fr.states["m"].values[0]) == {"a"} and "x" not in fr.states["m"].values[0]
    got = list(fr.runs("m", model, ["b", "a"], batches, 2, rt))
    fr.commit()
    np.testing.assert_array_equal(got[0][1]["b"], -np.maximum(x[0], 0))
    assert set(fr.states["m"].values[1]) == {"a", "b"}  # c reads both
    assert fr.states["m"].ran == {"a", "b"}
    small = F.Frontier(2 * x[0].nbytes, spill=False)  # a fits (one per batch), a and b not
    list(small.runs("m", model, ["a"], batches, 2, rt))
    small.commit()
    got = list(small.runs("m", model, ["b"], batches, 2, rt))
    small.commit()  # over: the cut stays after a
    assert small.states["m"].ran == {"a"} and not small.over
    again = list(small.runs("m", model, ["c"], batches, 2, rt))  # b again, from a
    np.testing.assert_array_equal(again[1][1]["c"], np.maximum(x[1], 0) - np.maximum(x[1], 0))
    np.testing.assert_array_equal(got[1][1]["b"], -np.maximum(x[1], 0))


def test_a_model_with_its_batch_fixed_at_1_captures_from_the_cuts(monkeypatch, tmp_path):
    """Fixed batch 1 (PP-PicoDet, ddddocr's models): its sequential groups used to run every
    prefix again (the batch-free runs of batching.py bypassed the frontier; PicoDet's W4
    capture took 1,711 s): now the frontier runs them one sample at a time from the cuts,
    each node about once; the first groups' captures are the same, the rest differ by
    the batched runs' float rounding (OBQ's near ties then go other ways), the model's
    output error alike."""
    import onnx

    model = onnx.load(str(MODELS / "digits_cnn.onnx"))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = 1
    path = tmp_path / "fixed.onnx"
    onnx.save(model, path)
    run = lambda: convert(path, None, calib=MODELS / "digits_cnn.calib.npz",  # noqa: E731
                          progress=False, compare_baseline=False, bits=4, calib_samples=48)
    sizes = _counting(monkeypatch)
    cut = run()
    assert sizes and sum(sizes) <= 2 * len(cut.model.graph.node) + 4 * len(cut.report.layers)
    monkeypatch.setattr(S, "Frontier", lambda budget: None)
    full = run()
    first = [(a.loss, b.loss) for a, b in zip(cut.report.layers, full.report.layers)][:2]
    assert all(a == pytest.approx(b, rel=1e-9) for a, b in first)  # the same first captures
    err = [next(iter(r.report.fidelity.values()))["compressed"].rel_error["logits"]
           for r in (cut, full)]  # later: the batched runs' float rounding moves OBQ's ties
    assert err[0] == pytest.approx(err[1], rel=0.2)
