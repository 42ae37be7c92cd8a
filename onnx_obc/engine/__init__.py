"""Where the independent per-layer solves run (each layer's solve and each layer's level
table, given its Hessian): in this process one after another ("local", the default), or
as Ray tasks on many workers ("ray", `pip install onnx-obc[ray]`).

    engine = make_engine(cfg.run, backend)
    results = engine.map(fn, n, make, cost, desc="solve", labels=names, progress=True)

`fn(task, backend) -> result` is a module-level function (Ray pickles it by reference);
`make(i)` builds task i (host or device arrays and settings) only when it is submitted,
so the local engine holds one layer at a time as before; `cost[i]` (e.g. rows * d^3)
orders the Ray submissions, largest first. Results come back in the order 0..n-1 and are
the same bytes whichever engine ran them. No scheduler of our own: Ray places the tasks.
"""

from __future__ import annotations

from typing import Any

from ..backend import Backend
from .local import Engine, LocalEngine
from .options import ENGINES, check_engine

__all__ = ["ENGINES", "Engine", "LocalEngine", "check_engine", "make_engine"]


def make_engine(run: Any, backend: Backend) -> Engine:
    """The engine `run.engine` names (RunOptions); "ray" fails here, before any work, when
    Ray is not installed. Ray itself starts (or connects) at the first map."""
    if run.engine == "local":
        return LocalEngine(backend)
    from .ray_engine import RayEngine, import_ray

    import_ray()
    return RayEngine(workers=run.workers, address=run.ray_address,
                     device="cuda" if backend.name == "cupy" else "cpu")
