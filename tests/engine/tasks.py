"""Toy engine tasks (module-level, so Ray workers import them by name)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def square(task, backend):
    """task: an int array; its square, the worker's pid and the time it ran."""
    return task * task, os.getpid(), time.perf_counter_ns()


def dies_once(task, backend):
    """Kills its worker the first time (a marker file at `task`), then answers."""
    marker = Path(task)
    if not marker.exists():
        marker.write_text("died")
        os._exit(1)
    return "done"


def raises(task, backend):
    raise ValueError(f"no good: {task}")


def blas(task, backend):
    """The worker's BLAS thread counts while it runs a task."""
    from threadpoolctl import threadpool_info

    return {i["prefix"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
