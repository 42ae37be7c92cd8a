"""The Ray engine: each task is a Ray task, its arrays put once in the object store.

Submission: largest predicted cost first, at most `workers` tasks in flight (each built by
`make(i)` only when submitted, so the driver holds `workers` tasks' arrays at a time); Ray
places them on its workers (as many CPUs each as the driver's BLAS threads, at most a
node's; on CUDA one GPU and one CPU each, solved on the worker's own CuPy backend). A task
whose worker dies is retried by Ray (`max_retries`); one that still fails, or raises, stops
the map with an EngineError naming it. One progress bar, updated as results arrive.

BLAS threads: OpenBLAS's Cholesky, inverse and solve give other last bits with another
thread count (from d = 128; matrix products do not), which can flip a later choice (OBQ on
the shipped CNN), and Ray runs a one-CPU task with one thread. Each task therefore runs with
the driver's BLAS thread counts (threadpoolctl), so its results are the bytes of the serial
run at the same thread count. A local Ray started here gets workers x threads CPUs; on a
small machine run both with OMP_NUM_THREADS=1 (bench/bench_ray.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm.auto import tqdm

from ..backend import Backend, get_backend, to_numpy
from ..errors import ConfigError, EngineError

INSTALL = "pip install onnx-obc[ray]"


def import_ray() -> ModuleType:
    """The ray module, or a ConfigError saying how to install it."""
    try:
        import ray
        import threadpoolctl  # noqa: F401  (the workers' BLAS threads)
    except ImportError as exc:
        raise ConfigError(f"run.engine ray needs Ray, which is not importable ({exc}): "
                          f"{INSTALL}, or use run.engine local") from None
    return ray


@dataclass
class RayEngine:
    """workers: tasks in flight (a Ray started here gets workers x BLAS threads CPUs;
    None: every CPU); address: a running cluster ("HEAD:6379", "auto"; None: RAY_ADDRESS
    when set, else a local Ray started in this process); device "cpu" or "cuda"."""

    workers: int | None = None
    address: str | None = None
    device: str = "cpu"
    max_retries: int = 3
    name: str = "ray"

    def map(self, fn: Callable[[Any, Backend], Any], n: int, make: Callable[[int], Any],
            cost: Sequence[float] = (), *, desc: str = "", labels: Sequence[str] = (),
            progress: bool = False) -> list[Any]:
        blas = blas_threads()
        threads = max(blas.values(), default=1)
        ray = self._connect(threads)
        cuda = self.device == "cuda"
        remote = _remote(ray).options(
            num_cpus=1 if cuda else min(threads, _largest_node(ray)), num_gpus=int(cuda),
            max_retries=self.max_retries, retry_exceptions=False)
        order = iter(sorted(range(n), key=lambda i: (-cost[i], i)) if cost else range(n))
        results: list[Any] = [None] * n
        pending: dict[Any, int] = {}  # object ref -> task index

        def submit() -> None:
            i = next(order, None)
            if i is not None:
                task = ray.put(_on_host(make(i)))  # the task's arrays, once
                pending[remote.remote(fn, task, self.device, blas)] = i

        for _ in range(min(n, self.workers or n)):
            submit()
        with tqdm(total=n, desc=desc, unit="layer", disable=not progress) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                try:
                    results[i] = ray.get(done[0])
                except ray.exceptions.RayError as exc:  # RayTaskError, WorkerCrashedError...
                    for ref in pending:
                        ray.cancel(ref)
                    what = f"{desc} {labels[i] if labels else f'task {i}'}".strip()
                    raise EngineError(
                        f"{what} failed on a Ray worker (retried up to "
                        f"{self.max_retries} times if the worker died): {_cause(exc)}"
                    ) from None
                if labels:
                    bar.set_postfix_str(labels[i][:40])
                bar.update()
                submit()
        return results

    def _connect(self, threads: int) -> ModuleType:
        ray = import_ray()
        if not ray.is_initialized():
            if self.address or os.environ.get("RAY_ADDRESS"):
                ray.init(address=self.address)  # None: RAY_ADDRESS
            else:
                here = str(Path(__file__).resolve().parents[2])  # workers import onnx_obc
                path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
                ray.init(num_cpus=self.workers and self.workers * threads,
                         include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
        return ray


def _largest_node(ray: ModuleType) -> int:
    """The most CPUs of one live node (a task asking for more would never run)."""
    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(max(cpus, default=1)))


def blas_threads() -> dict[str, int]:
    """This process's BLAS libraries and their thread counts (threadpoolctl prefixes)."""
    from threadpoolctl import threadpool_info

    return {i["prefix"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def _run(fn: Callable[[Any, Backend], Any], task: Any, device: str, blas: dict[str, int]
         ) -> Any:
    """On the worker: the task on the worker's own backend, with the driver's BLAS threads."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=blas):
        return fn(task, _worker_backend(device))


@cache
def _worker_backend(device: str) -> Backend:
    return get_backend(device)


_REMOTE: list[Any] = []


def _remote(ray: ModuleType) -> Any:
    """ray.remote(_run), made once (Ray exports it again to a new session by itself)."""
    if not _REMOTE:
        _REMOTE.append(ray.remote(_run))
    return _REMOTE[0]


def _on_host(task: Any) -> Any:
    """The task with its arrays as NumPy (a device array would pin the driver's GPU)."""
    if not dataclasses.is_dataclass(task):
        return task
    arrays = {f.name: to_numpy(v) for f in dataclasses.fields(task)
              if hasattr(v := getattr(task, f.name), "__array__")
              and not dataclasses.is_dataclass(v)}
    return dataclasses.replace(task, **arrays)


def _cause(exc: BaseException) -> str:
    """The worker's exception (a RayTaskError's cause), else Ray's own (worker crashed...)."""
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {cause}"
