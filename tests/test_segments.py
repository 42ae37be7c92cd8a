"""Running a model piece by piece over kept tensors (segments.py): the same tensors as one
session, changes made at a stop reach every later node, residual branches and run-time
shapes cross the cuts, and a budget too small for the kept tensors stops it first."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import onnx_obc.segments as S
from onnx_obc.segments import TooLarge, run_in_segments

from . import builders as b

RUN = ["CPUExecutionProvider"]


def _residual(extra_add: bool = False) -> onnx.ModelProto:
    """x [N, 3, 6, 6] -c1-> a -Relu-> r -c2-> c -Add(r)-> s -Reshape(Shape(s))-> t -c3-> y;
    with `extra_add` a per-channel +1 on a (what a visit that adds 1 to a should equal)."""
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a0"], name="c1", pads=[1] * 4),
             helper.make_node("Add", ["a0", "one"], ["a"], name="plus") if extra_add else
             helper.make_node("Identity", ["a0"], ["a"], name="same"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "W2"], ["c"], name="c2"),
             helper.make_node("Add", ["c", "r"], ["s"], name="res"),
             helper.make_node("Shape", ["s"], ["shp"], name="shape"),
             helper.make_node("Reshape", ["s", "shp"], ["t"], name="reshape"),
             helper.make_node("Conv", ["t", "W3", "B3"], ["y"], name="c3")]
    inits = [b.weight("W1", (4, 3, 3, 3), 0), b.weight("B1", (4,), 1),
             b.weight("W2", (4, 4, 1, 1), 2), b.weight("W3", (2, 4, 1, 1), 3),
             b.weight("B3", (2,), 4),
             onnx.numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "one")]
    return b.make(nodes, [b.vi("x", [b.BATCH, 3, 6, 6])], [b.vi("y", [b.BATCH, 2, 6, 6])],
                  inits)


def _batches(n: int = 3):
    rng = np.random.default_rng(0)
    return [(5, {"x": rng.standard_normal((5, 3, 6, 6)).astype(np.float32)})
            for _ in range(n)]


def _whole(model, names, batches):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=RUN)
    return [dict(zip(names, sess.run(names, f))) for _, f in batches]


def test_pieces_give_the_tensors_of_one_session():
    model, batches = _residual(), _batches()
    seen: dict[str, list[np.ndarray]] = {}

    def visit(name, ys):
        seen[name] = list(ys)

    run_in_segments(model, ["a0", "c", "y"], batches, RUN, visit, budget=1 << 30)
    assert list(seen) == ["a0", "c", "y"]  # topological order, each once
    ref = _whole(model, ["a0", "c", "y"], batches)
    for name, ys in seen.items():
        assert len(ys) == len(batches)
        for y, r in zip(ys, ref):
            np.testing.assert_allclose(y, r[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("budget", [1 << 30, 0])
def test_a_change_at_a_stop_reaches_every_later_node(budget, monkeypatch, tmp_path):
    """+1 on c1's output at its stop = the model with an Add of 1 there, on both branches
    of the residual (the Conv and the skip) and through the run-time Reshape; the same with
    every kept tensor on disk (budget 0: the shift added as each is read back), and the
    spill folder gone afterwards."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(S, "_in_memory", lambda path: False)  # a tmpfs /tmp counts as disk
    model, batches = _residual(), _batches()
    got = {}
    saved = []
    real = np.save
    monkeypatch.setattr(np, "save", lambda f, v: saved.append(f) or real(f, v))

    def visit(name, ys):
        got[name] = list(ys)
        return np.float32(1.0) if name == "a0" else None

    run_in_segments(model, ["a0", "y"], batches, RUN, visit, budget=budget)
    assert (len(saved) > 0) == (budget == 0) and list(tmp_path.iterdir()) == []
    ref = _whole(_residual(extra_add=True), ["y"], batches)
    base = _whole(model, ["y"], batches)
    for y, r, r0 in zip(got["y"], ref, base):
        np.testing.assert_allclose(y, r["y"], rtol=1e-5, atol=1e-5)
        assert np.abs(y - r0["y"]).max() > 0.1  # the change did reach y


def test_a_budget_too_small_stops_before_the_run_and_unknown_stops_are_refused(monkeypatch):
    model, batches = _residual(), _batches()
    calls = []
    with pytest.raises(TooLarge, match="budget"):
        run_in_segments(model, ["a0", "y"], batches, RUN,
                        lambda n, ys: calls.append(n), budget=1000, spill=False)
    assert calls == []  # nothing visited: the first piece's projection is over the budget
    with pytest.raises(ValueError, match="no node makes"):
        run_in_segments(model, ["nope"], batches, RUN, lambda n, ys: None, budget=1 << 30)
    monkeypatch.setattr(S, "SPARE", 1 << 62)  # spilling allowed, but no room: the same
    with pytest.raises(TooLarge, match="would not fit in .*GiB free; TMPDIR"):
        run_in_segments(model, ["a0", "y"], batches, RUN, lambda n, ys: None, budget=1000)
    monkeypatch.setattr(S, "SPARE", 0)  # room, but in memory: refused too
    monkeypatch.setattr(S, "_in_memory", lambda path: True)
    with pytest.raises(TooLarge, match=r"memory \(tmpfs\), not a disk"):
        run_in_segments(model, ["a0", "y"], batches, RUN, lambda n, ys: None, budget=1000)


def test_a_folder_on_tmpfs_is_in_memory(tmp_path):
    """The deepest mount holding the folder decides: tmpfs / ramfs are memory."""
    from pathlib import Path

    from onnx_obc.segments import _in_memory

    table = tmp_path / "mounts"
    table.write_text("/dev/vda / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n"
                     "/dev/vdb /tmp/disk ext4 rw 0 0\nramfs /r ramfs rw 0 0\n")
    assert _in_memory(Path("/tmp/x"), str(table)) and _in_memory(Path("/r"), str(table))
    assert not _in_memory(Path("/tmp/disk/x"), str(table))
    assert not _in_memory(Path("/tmpx"), str(table)) and not _in_memory(Path("/"), str(table))
    assert not _in_memory(Path("/tmp"), str(tmp_path / "none"))  # no table: a disk


def test_what_reads_no_input_is_kept_once_for_all_batches():
    """A tensor computed from weights alone (a dequantized weight: here a 1 MiB Identity of
    an initializer, made before the first cut and read after it) is the same for every
    batch: kept once, so 40 batches fit a budget 40 copies would not, same results."""
    big = onnx.numpy_helper.from_array(np.full((256, 1024), 0.5, np.float32), "Wbig")
    model = _residual()
    g = model.graph
    nodes = list(g.node)
    del g.node[:]
    g.node.extend([helper.make_node("Identity", ["Wbig"], ["wbig"], name="deq")] + nodes[:4]
                  + [helper.make_node("ReduceMean", ["wbig"], ["m"], name="mean", keepdims=0),
                     helper.make_node("Add", ["c", "m"], ["c_m"], name="shift")]
                  + [helper.make_node("Add", ["c_m", "r"], ["s"], name="res")] + nodes[5:])
    g.initializer.append(big)
    onnx.checker.check_model(model)
    batches = _batches(40)
    seen = {}
    run_in_segments(model, ["a0", "y"], batches, RUN,
                    lambda n, ys: seen.setdefault(n, list(ys)) and None, budget=8 << 20,
                    spill=False)
    ref = _whole(model, ["y"], batches)
    for y, r in zip(seen["y"], ref):
        np.testing.assert_allclose(y, r["y"], rtol=1e-6, atol=1e-6)
    assert 40 * big.ByteSize() > 8 << 20  # forty copies would not have fit


def test_pieces_reading_large_kept_tensors_run_without_the_memory_arena(monkeypatch):
    """A piece whose kept input per run is ARENA_MAX bytes or more gets a session without
    onnxruntime's CPU memory arena, the others keep it; the tensors are the same."""
    model, batches = _residual(), _batches()
    made: list[bool] = []
    real = S.session

    def spy(m, providers, arena=True):
        made.append(arena)
        return real(m, providers, arena=arena)

    def run(limit):
        seen: dict[str, list[np.ndarray]] = {}

        def visit(name, ys):
            seen[name] = [y.copy() for y in ys]

        made.clear()
        monkeypatch.setattr(S, "ARENA_MAX", limit)
        run_in_segments(model, ["a", "c", "y"], batches, RUN, visit, 1 << 30)
        return seen, list(made)

    monkeypatch.setattr(S, "session", spy)
    small, arenas = run(1 << 30)
    assert arenas == [True, True, True]
    # the first piece reads the graph input x (5 x 3 x 6 x 6 floats: 2,160 bytes a run),
    # the later ones kept 5 x 4 x 6 x 6 tensors (2,880 bytes)
    _, arenas = run(2881)
    assert arenas == [True, True, True]
    _, arenas = run(2880)
    assert arenas == [True, False, False]
    large, arenas = run(2160)
    assert arenas == [False, False, False]
    for k in small:
        for u, v in zip(small[k], large[k]):
            np.testing.assert_array_equal(u, v)


def test_the_spill_folder_is_removed_when_the_run_fails(monkeypatch, tmp_path):
    """A visit that raises after kept tensors went to disk: the error reaches the caller and
    the spill folder with its files is gone."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(S, "_in_memory", lambda path: False)  # a tmpfs /tmp counts as disk
    model, batches = _residual(), _batches()

    def visit(name, ys):
        assert any(tmp_path.iterdir())  # on disk now
        raise KeyError("stop here")

    with pytest.raises(KeyError, match="stop here"):
        run_in_segments(model, ["a0", "y"], batches, RUN, visit, budget=0)
    assert list(tmp_path.iterdir()) == []
