"""The Ray engine on a local Ray (2 CPUs): results in order, largest cost first, retries,
failures named, and the same bytes as the serial run on the shipped models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from onnx_obc import convert
from onnx_obc.backend import get_backend
from onnx_obc.engine import LocalEngine
from onnx_obc.engine.ray_engine import RayEngine, blas_threads
from onnx_obc.errors import EngineError

from . import tasks

pytest.importorskip("ray")
MODELS = Path(__file__).resolve().parents[2] / "models"
CPU = get_backend("cpu")


def test_results_come_back_in_order_and_match_the_local_engine(local_ray):
    cost = [1.0, 5.0, 2.0, 4.0, 3.0]
    make = lambda i: np.full(3, i)  # noqa: E731
    out = RayEngine(workers=2).map(tasks.square, 5, make, cost)
    local = LocalEngine(CPU).map(tasks.square, 5, make, cost)
    for (a, _, _), (b, _, _) in zip(out, local):
        np.testing.assert_array_equal(a, b)
    assert [int(a[0]) for a, _, _ in out] == [0, 1, 4, 9, 16]


def test_largest_predicted_cost_is_submitted_first(local_ray):
    cost = [1.0, 5.0, 2.0, 4.0, 3.0]
    out = RayEngine(workers=1).map(tasks.square, 5, lambda i: np.full(1, i), cost)
    started = sorted(range(5), key=lambda i: out[i][2])  # one in flight: run in order
    assert started == [1, 3, 4, 2, 0]


def test_a_worker_that_dies_is_retried_by_ray(local_ray, tmp_path):
    marker = tmp_path / "died"
    out = RayEngine(workers=2).map(tasks.dies_once, 1, lambda i: str(marker), [1.0])
    assert out == ["done"] and marker.read_text() == "died"


def test_a_task_that_raises_is_reported_by_name(local_ray):
    failed = r"levels fc[12] failed on a Ray worker .*: ValueError: no good: 3$"
    with pytest.raises(EngineError, match=failed):
        RayEngine(workers=2).map(tasks.raises, 2, lambda i: 3, [1.0, 2.0], desc="levels",
                                 labels=["fc1", "fc2"])


def test_tasks_run_with_the_drivers_blas_threads(local_ray):
    driver = blas_threads()
    assert driver and RayEngine(workers=2).map(tasks.blas, 2, lambda i: i, [1, 1]) == [
        driver, driver]  # Ray alone would give a one-CPU task one thread
    with threadpool_limits(1):
        one = RayEngine(workers=2).map(tasks.blas, 2, lambda i: i, [1, 1])
    assert one == [dict.fromkeys(driver, 1)] * 2


@pytest.mark.slow
def test_a_worker_that_dies_past_the_retries_is_reported_by_name(local_ray, tmp_path):
    engine = RayEngine(workers=2, max_retries=0)
    died = r"solve conv7 failed on a Ray worker .*(Worker|Crash|died)"
    with pytest.raises(EngineError, match=died):
        engine.map(tasks.dies_once, 1, lambda i: str(tmp_path / "x"), [1.0], desc="solve",
                   labels=["conv7"])


def _same_bytes(name: str, threads: int | None = None, **options) -> None:
    """Serial and Ray runs at the driver's BLAS threads (`threads`: limited to that many)."""
    kw = dict(calib=MODELS / f"{name}.calib.npz", progress=False, device="cpu",
              calib_samples=96, compare_baseline=False,
              **{"sequential": False, **options})  # Ray's default is one-shot
    with threadpool_limits(threads):
        serial = convert(MODELS / f"{name}.onnx", None, **kw)
        ray = convert(MODELS / f"{name}.onnx", None, engine="ray", workers=2, **kw)
    assert ray.model.SerializeToString() == serial.model.SerializeToString()
    assert [(x.name, x.loss, x.rank) for x in ray.report.layers] == [
        (x.name, x.loss, x.rank) for x in serial.report.layers]
    assert ray.report.warnings == serial.report.warnings


FAST = [("digits_cnn", {"bits": 4}),  # OBQ here depends on the BLAS thread count
        ("digits_vit", {"allocate": "dp", "sparsity": 0.6, "threads": 1})]  # 2 at once
SLOW = [(m, o) for m in ("digits_cnn", "digits_vit") for o in (
    {"sparsity": 0.5}, {"nm": (2, 4)}, {"bits": 4}, {"bits": 8, "act_bits": 8},
    {"allocate": "dp", "sparsity": 0.6}, {"allocate": "dp", "budget": "bops", "target": 12.0},
    {"sparsity": 0.5, "bits": 4, "sequential": True})]


@pytest.mark.parametrize("name,options", FAST)
def test_ray_output_is_byte_identical_to_the_serial_run(local_ray, name, options):
    _same_bytes(name, **options)


@pytest.mark.slow
@pytest.mark.parametrize("name,options", [x for x in SLOW if x not in FAST])
def test_ray_output_is_byte_identical_in_every_mode(local_ray, name, options):
    _same_bytes(name, **options)
