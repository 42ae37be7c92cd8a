"""The micro-benchmark's clock (costrates.py): each kernel timed with the BLAS threads the
solve will use (the process's) and with one thread, the better kept.

With another process busy on the cores, a multi-threaded BLAS's small kernels wait on their
descheduled threads: a 2-core machine with the other core loaded measured OpenBLAS's 2-thread
batched GEMM over 100x slower per flop than one thread, and the plan predicted 49,877 s for a
solve that took 96 s. A kernel run with n threads does at least what one thread does in the
same time (the solve's large kernels amortise the threads' start), so every timed kernel is
bounded by its one-thread time: the best of `repeat` runs of each, the one-thread runs first
(a multi-threaded series stops early once it is SLOW times slower, and once GIVE_UP kernels
looked contended the rest are timed with one thread only). A kernel whose
multi-threaded time was over CONTENDED times its one-thread time is recorded (`Clock.slow`)
and the plan says the rates looked contended; the solves then run on one BLAS thread
(`solve_threads`), as the one-thread rates predict. On a GPU (xp not numpy), without
threadpoolctl or with one BLAS thread, kernels are timed as they are.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any, Callable

CONTENDED = 3.0  # multi-threaded over one-thread time above this: the rates looked contended
SLOW = 4.0  # a multi-threaded series stops after a run this many times the one-thread best
GIVE_UP = 3  # once this many kernels looked contended, the rest are timed with one thread

Timer = Callable[[Any, Any, bool], float]  # (fn, sync, one_thread) -> seconds of one run


class Clock:
    """Times kernels (`best`) and keeps, per labelled kernel, (threads' s, one thread's s)."""

    def __init__(self, timer: Timer | None = None, threads: int | None = None,
                 host: bool = True) -> None:
        self._limit: Any = None
        if timer is None:
            self._limit, found = _blas_limit() if host else (None, 1)
            timer = self._timed
            threads = found if threads is None else threads
        self.timer = timer
        self.threads = max(1, threads or 1)
        self.times: dict[str, tuple[float, float]] = {}

    def best(self, fn: Any, sync: Any, repeat: int = 3, label: str = "") -> float:
        """The least seconds of `fn` over `repeat` runs with the process's threads and, when
        those are several, `repeat` runs with one thread."""
        if self.threads == 1:
            t = min(self.timer(fn, sync, False) for _ in range(repeat))
            self._keep(label, t, t)
            return t
        one = self.timer(fn, sync, True)
        multi = math.inf
        for _ in range(0 if len(self.slow) >= GIVE_UP else repeat):
            multi = min(multi, self.timer(fn, sync, False))
            if multi > SLOW * one:
                break  # contended: more runs would cost time and not be kept
        for _ in range(repeat - 1):
            one = min(one, self.timer(fn, sync, True))
        self._keep(label, multi, one)
        return min(multi, one)

    def _keep(self, label: str, multi: float, one: float) -> None:
        if label:
            old = self.times.get(label)
            self.times[label] = (multi, one) if old is None else (min(old[0], multi),
                                                                  min(old[1], one))

    def _timed(self, fn: Any, sync: Any, one: bool) -> float:
        with self._limit(limits=1, user_api="blas") if one and self._limit else nullcontext():
            t = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - t

    @property
    def slow(self) -> dict[str, float]:
        """Kernel -> multi-threaded over one-thread time, where over CONTENDED."""
        return {k: m / o for k, (m, o) in self.times.items()
                if 0 < o and CONTENDED * o < m < math.inf}

    def summary(self) -> dict[str, float]:
        """The figures Rates records: threads, the worst ratio, the share of kernels whose
        one-thread time was kept."""
        ratios = [m / o for m, o in self.times.values() if o > 0]
        return {"threads": float(self.threads),
                "contention": max([1.0, *(r for r in ratios if r < math.inf)]),
                "one_thread": sum(r > 1 for r in ratios) / len(ratios) if ratios else 0.0}


def _blas_limit() -> tuple[Any, int]:
    """(threadpoolctl's limit for this process's BLAS, its threads), or (None, 1)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None, 1
    c = ThreadpoolController()
    threads = max([1] + [i["num_threads"] for i in c.info() if i["user_api"] == "blas"])
    return (c.limit if threads > 1 else None), threads


def solve_threads(rates: dict[str, float]) -> Any:
    """Where the plan's rates found the BLAS's threads contended (so its kernels' rates are
    the one-thread ones): a context that runs the solves on one BLAS thread, as predicted;
    the contended threads slow the solve's small kernels as they slowed the benchmark's
    (PP-OCR's classifier at W4, load 8 on 2 cores: solve 48.8 s on 2 threads, 13.8 s on one).
    Otherwise (or on a GPU: `threads` 1 there) nothing changes."""
    if rates.get("contention", 1.0) <= CONTENDED or rates.get("threads", 1.0) <= 1:
        return nullcontext()
    limit, _ = _blas_limit()
    return limit(limits=1, user_api="blas") if limit else nullcontext()


def contention_note(rates: Any) -> str | None:
    """The plan's warning when the micro-benchmark's multi-threaded kernels were much slower
    than with one thread ("" fields: rates made elsewhere, never contended)."""
    slow = getattr(rates, "slow", ())
    if not slow:
        return None
    return (f"the cost plan's micro-benchmark looked contended: with {rates.threads:g} BLAS "
            f"threads {', '.join(slow)} ran up to {rates.contention:.0f}x slower than with one "
            "thread (another process busy on the cores?); the plan uses the one-thread times "
            "and the solves run on one BLAS thread")
