"""The serial engine: every task in this process, in order, on the run's backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm.auto import tqdm

from ..backend import Backend


class Engine(Protocol):
    name: str

    def map(self, fn: Callable[[Any, Backend], Any], n: int, make: Callable[[int], Any],
            cost: Sequence[float], *, desc: str = "", labels: Sequence[str] = (),
            progress: bool = False) -> list[Any]:
        """[fn(make(i), backend) for i in range(n)], wherever they run (package docstring)."""
        ...


@dataclass(frozen=True)
class LocalEngine:
    """fn(make(i), backend) for i = 0.. n-1, one after another (one task in memory)."""

    backend: Backend
    name: str = "local"

    def map(self, fn: Callable[[Any, Backend], Any], n: int, make: Callable[[int], Any],
            cost: Sequence[float] = (), *, desc: str = "", labels: Sequence[str] = (),
            progress: bool = False) -> list[Any]:
        out = []
        bar = tqdm(range(n), desc=desc, unit="layer", disable=not progress)
        for i in bar:
            if labels:
                bar.set_postfix_str(labels[i][:40])
            out.append(fn(make(i), self.backend))
        return out
