"""Choosing the engine: the RunOptions fields, the flags, the local engine, and Ray
missing with --engine ray (a clear error before any work)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from click.testing import CliRunner

import onnx_obc.schedule as schedule
from onnx_obc.backend import get_backend
from onnx_obc.cli import main
from onnx_obc.config import CompressConfig, RunOptions
from onnx_obc.engine import LocalEngine, make_engine
from onnx_obc.errors import ConfigError

from .. import builders as b


@pytest.mark.parametrize("kw,message", [
    ({"engine": "spark"}, "run.engine must be one of local, ray"),
    ({"engine": "ray", "workers": 0}, "run.workers must be an integer >= 1"),
    ({"engine": "ray", "workers": 1.5}, "run.workers must be an integer >= 1"),
    ({"engine": "ray", "ray_address": " "}, "run.ray_address must be a Ray address"),
    ({"workers": 2}, "are for run.engine ray"),
    ({"ray_address": "head:6379"}, "are for run.engine ray"),
])
def test_engine_fields_are_validated(kw, message):
    with pytest.raises(ConfigError, match=message):
        RunOptions(**kw)


def test_engine_fields_round_trip_through_a_recipe():
    cfg = CompressConfig.from_options(sparsity=0.5, engine="ray", workers=4,
                                      ray_address="head:6379")
    assert CompressConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.run.engine, cfg.run.workers, cfg.run.ray_address) == ("ray", 4, "head:6379")


def test_the_local_engine_runs_in_order_one_task_at_a_time():
    made = []

    def make(i):
        made.append(i)
        return np.full(2, i)

    out = LocalEngine(get_backend("cpu")).map(lambda t, be: (t * 10, len(made)), 3, make,
                                              [1.0, 9.0, 5.0])
    assert [int(a[0]) for a, _ in out] == [0, 10, 20]
    assert [n for _, n in out] == [1, 2, 3]  # each task built just before it ran


def test_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install onnx-obc\[ray\]"):
        make_engine(RunOptions(engine="ray"), get_backend("cpu"))


def test_missing_ray_fails_on_the_command_line_before_any_work(monkeypatch, saved):
    model, data = saved(b.mlp([8, 6, 4]), n=16)
    monkeypatch.setitem(sys.modules, "ray", None)
    calls = []
    monkeypatch.setattr(schedule, "collect", lambda *a, **k: calls.append(a))
    res = CliRunner().invoke(main, [str(model), str(model.with_name("out.onnx")),
                                    "--sparsity", "0.5", "--calib", str(data), "-q",
                                    "--engine", "ray", "--workers", "2"])
    assert res.exit_code == 2, res.output
    assert "--engine ray needs Ray" in res.output and "pip install onnx-obc[ray]" in res.output
    assert not calls and not model.with_name("out.onnx").exists()
