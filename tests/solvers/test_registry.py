"""The solver registry: a new structure kind is one type plus its registered baseline and
pruner, and solve_layer dispatches to them (with OBQ after, and the baseline methods for
free); unknown methods, structure types and combinations are ConfigErrors naming the field."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from onnx_obc.errors import ConfigError
from onnx_obc.quant import QuantSpec
from onnx_obc.solvers import (NM, Blocks, LayerSolution, Pruned, Unstructured, layer_loss,
                              linear_nm_groups, register_baseline, register_pruner,
                              register_solver, solve_layer, traces)
from onnx_obc.solvers import registry
from onnx_obc.solvers.select import rebuild

from .data import correlated_H, weights


@pytest.fixture(autouse=True)
def _scratch_registry(monkeypatch):
    """Registrations made by a test do not outlive it."""
    for table in ("_SOLVERS", "_PIPELINES", "_PRUNERS", "_BASELINES", "_TRACERS"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))


@dataclass(frozen=True)
class Columns:
    """A test kind: the same `k` input columns removed from every row (channel pruning)."""

    k: int

    @property
    def sparsity(self) -> float:
        return float("nan")  # depends on d; not needed by the solvers

    def removals(self, G: int, r: int, d: int) -> int:
        return self.k * G * r


def _weakest(W64, k):
    """The k columns with the smallest ||W[:, j]||^2 over every row."""
    G, r, d = W64.shape
    return np.argsort((W64.reshape(G * r, d) ** 2).sum(axis=0), kind="stable")[:k]


def _register_columns():
    @register_baseline(Columns)
    def magnitude(W64, st, count):
        out = W64.copy()
        out[:, :, _weakest(W64, st.k)] = 0.0
        return out

    @register_pruner(Columns, "obc")
    def obs(stage, st, count):
        R, d = stage.rows.shape
        drop = _weakest(stage.rows.astype(np.float64)[None], st.k)
        rest = np.setdiff1d(np.arange(d), drop)
        order = np.broadcast_to(np.concatenate([drop, rest]), (R, d))
        rows = rebuild(stage.rows, stage.Hinv, stage.group, order, np.full(R, st.k),
                       stage.rows_per_batch)  # the optimum on the shared mask
        return Pruned(rows=rows, obs_loss=0.0, steps_run=st.k)


def test_a_new_structure_kind_dispatches_to_its_registered_pruner():
    _register_columns()
    W, H = weights(12, 20, 0), correlated_H(20, 0)[None]
    res = solve_layer(W, H, structure=Columns(5), damp=0.0)
    dropped = np.all(res.W[0] == 0, axis=0)
    assert dropped.sum() == 5 and res.zeros == 5 * 12
    np.testing.assert_array_equal(res.baseline[0][:, dropped], 0.0)  # the same columns
    assert res.loss < 0.5 * res.baseline_loss  # compensated vs not, on the same mask
    assert res.steps_run == 5 and res.prune_loss == pytest.approx(res.loss)


def test_a_new_kind_gets_obq_after_pruning_and_the_baseline_methods():
    _register_columns()
    W, H = weights(12, 20, 1), correlated_H(20, 1)[None]
    q = solve_layer(W, H, structure=Columns(4), quant=QuantSpec(bits=4))
    assert int(np.all(q.W[0] == 0, axis=0).sum()) == 4  # the zeros are kept by OBQ
    assert q.codes is not None and q.loss >= q.prune_loss
    for method in ("magnitude", "rtn"):
        b = solve_layer(W, H, structure=Columns(4), quant=QuantSpec(bits=4), method=method)
        np.testing.assert_array_equal(b.W, q.baseline)
        assert b.loss == b.baseline_loss == q.baseline_loss


def test_a_registered_whole_layer_solver_is_dispatched_by_method():
    @register_solver(Unstructured, "keep")
    def keep(task):
        b = task.baseline
        return LayerSolution(W=task.W, baseline=b.W, loss=0.0, baseline_loss=b.loss,
                             obs_loss=0.0, zeros=0, dead=0, damp=task.damp, escalations=())

    W, H = weights(4, 8, 2), correlated_H(8, 2)[None]
    res = solve_layer(W, H, structure=Unstructured(0.5), method="keep", damp=0.5)
    assert res.W is W and res.damp == 0.5
    assert res.baseline_loss == pytest.approx(layer_loss(W, res.baseline, H))
    with pytest.raises(ConfigError, match="'keep' does not handle NM"):
        solve_layer(W, H, structure=NM(2, 4).on_columns(linear_nm_groups(8, 4)), method="keep")


def test_unknown_method_names_the_field_and_the_methods():
    W, H = weights(4, 8, 3), correlated_H(8, 3)[None]
    with pytest.raises(ConfigError, match=r"solver.method must be one of gptq, magnitude, "
                                          r"obc, rtn, got 'obs'"):
        solve_layer(W, H, structure=Unstructured(0.5), method="obs")


def test_gptq_prunes_unstructured_and_nm_not_blocks():
    W, H = weights(4, 8, 4), correlated_H(8, 4)[None]
    st = Blocks(4, 0.5).on_columns(linear_nm_groups(8, 4))
    with pytest.raises(ConfigError, match=r"solver.method 'gptq' does not handle Blocks "
                                          r"structures \(it handles: NM, Unstructured\)"):
        solve_layer(W, H, structure=st, method="gptq")
    assert solve_layer(W, H, structure=st).zeros == 16  # the default method handles it
    nm = NM(2, 4).on_columns(linear_nm_groups(8, 4))
    assert solve_layer(W, H, structure=nm, method="gptq").zeros == 16


def test_unregistered_structure_type_is_a_config_error():
    _register_columns()  # Columns has a baseline but no tracer; object has nothing at all
    W, H = weights(4, 8, 5), correlated_H(8, 5)[None]
    with pytest.raises(ConfigError, match="structure: no baseline is registered for str"):
        solve_layer(W, H, structure="2:4")
    with pytest.raises(ConfigError, match="'gptq' does not handle Columns"):
        solve_layer(W, H, structure=Columns(2), method="gptq")
    with pytest.raises(ConfigError, match="no tracer .* registered for Columns"):
        traces(W, H, Columns(2), 0.5)
    with pytest.raises(ConfigError, match="no tracer .* registered for NM"):
        traces(W, H, NM(2, 4).on_columns(linear_nm_groups(8, 4)), 0.5)
