"""Per-layer profiles: the DP's choice written as JSON, and read back as levels to apply
(`--profile`) instead of running the DP again.

    {"version": 1, "choice": {layer: level}, "cost": ..., "error": ..., "budget": ..., **extra}

A level is a sparsity number or a label (levels.py: "fp32", "w8", "2:4+w4", "0.5").
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from ..errors import ConfigError
from .dp import Allocation
from .levels import Level

_RESERVED = ("version", "choice", "cost", "error", "budget")


def save_profile(path: str | os.PathLike, allocation: Allocation,
                 extra: dict[str, Any] | None = None) -> None:
    """Write `{"version": 1, "choice", "cost", "error", "budget", **extra}` atomically."""
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ConfigError(f"save_profile: extra keys {clash} are reserved")
    doc = {"version": 1, "choice": dict(allocation.choice), "cost": allocation.cost,
           "error": allocation.error, "budget": allocation.budget, **extra}
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load_profile(path: str | os.PathLike) -> dict[str, Level]:
    """Read a profile written by `save_profile`; returns layer name -> level."""
    where = f"profile {os.fspath(path)}"
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: cannot read JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("version") != 1:
        raise ConfigError(f"{where}: 'version' must be 1, got {doc.get('version')!r}")
    for key in ("cost", "error", "budget"):
        if not _is_num(doc.get(key)):
            raise ConfigError(f"{where}: '{key}' must be a finite number, got {doc.get(key)!r}")
    choice = doc.get("choice")
    if not isinstance(choice, dict) or not choice:
        raise ConfigError(f"{where}: 'choice' must be a non-empty object layer -> level")
    out = {}
    for name, level in choice.items():
        try:
            out[name] = Level.parse(level)
        except ConfigError as e:
            raise ConfigError(f"{where}: choice[{name!r}]: {e}") from None
    return out
