"""The field checks of the specs (specs.py): each raises ConfigError naming the field and what
it accepts."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError


def nm_value(nm: Any) -> Any:
    """An N:M pattern as the tuple (N, M) from the command line's "2:4"; anything else as it
    is (lists become tuples in config._coerce; nm_ok judges the rest)."""
    if isinstance(nm, str) and nm.count(":") == 1 and all(
            p.strip().isdigit() for p in nm.split(":")):
        return tuple(int(p) for p in nm.split(":"))
    return nm


def nm_ok(nm: Any, name: str) -> None:
    if nm is not None and not (isinstance(nm, tuple) and len(nm) == 2 and all(
            isinstance(x, int) for x in nm) and 0 < nm[0] < nm[1]):
        raise ConfigError(f"{name} needs a tuple of integers (N, M) with 0 < N < M, got {nm!r} "
                          "(e.g. (2, 4) or \"2:4\")")


def fraction(value: Any, name: str, hint: str = "") -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0.0 < value < 1.0):
        raise ConfigError(f"{name} must be a fraction strictly between 0 and 1, got "
                          f"{value!r}{hint}")


def choice(value: Any, options: tuple[str, ...], name: str) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")


def patterns(value: Any, name: str) -> None:
    if not isinstance(value, tuple) or not all(isinstance(p, str) for p in value):
        raise ConfigError(f"{name} must be a tuple of strings, got {value!r}")
