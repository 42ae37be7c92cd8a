"""RunOptions' engine fields, validated on construction (specs.RunOptions calls this)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

ENGINES = ("local", "ray")


def check_engine(engine: Any, workers: Any, address: Any) -> None:
    """run.engine is one of ENGINES; run.ray_address a non-empty string; both workers and
    ray_address only with run.engine ray (run.workers' type is checked with the integers)."""
    if engine not in ENGINES:
        raise ConfigError(f"run.engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError(f"run.ray_address must be a Ray address such as HEAD:6379 or "
                          f"'auto', got {address!r}")
    if engine == "local" and (workers is not None or address is not None):
        raise ConfigError("run.workers and run.ray_address are for run.engine ray: add "
                          "run.engine ray, or drop them")
