"""What the pruning stage removes: frozen, validated structure types, and column groupings.

    Unstructured(sparsity)   any `sparsity` fraction of the layer's weights (global selection)
    NM(n, m)                 n zeros in every group of m columns of every row (OBC's meaning:
                             2:4 prunes 2 of every 4); the sparsity is n/m
    Blocks(size, sparsity)   a `sparsity` fraction of the blocks of `size` columns

N:M groups and blocks are sets of columns of a row w [d] (d = Cin/g * prod(kernel) for a
Conv, C-major; K for a MatMul / Gemm) taken along the axis the runtime reads: consecutive
input channels at one kernel position (TensorRT's 2:4 kernels, DeepSparse's 4-blocks).
That grouping is per-layer data: `conv_nm_groups` / `linear_nm_groups` build it and
`.on_columns(col_groups)` binds it, giving a new instance. Structures are keys of the solver
registry (registry.py): a new kind is one new type plus its registered solvers.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ..backend import to_numpy
from ..errors import ConfigError

__all__ = ["Unstructured", "NM", "Blocks", "Structure", "conv_nm_groups", "linear_nm_groups",
           "check_groups"]


def _fraction(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a fraction from 0 to 1, got {value!r}")


def _integer(value: Any, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class Unstructured:
    """`sparsity` of the layer's weights, selected globally across rows."""

    sparsity: float

    def __post_init__(self) -> None:
        _fraction(self.sparsity, "Unstructured.sparsity")

    def removals(self, G: int, r: int, d: int) -> int:
        """Weights removed from a layer W [G, r, d]."""
        return int(round(self.sparsity * G * r * d)) if self.sparsity else 0


class _Grouped:
    """A structure over column groups: `col_groups` [d] (group id of every column, as a tuple
    of ints; None until bound to a layer with `on_columns`)."""

    col_groups: tuple[int, ...] | None
    group_size: int  # columns per group (m, or the block size)

    def on_columns(self, col_groups: Any) -> Any:
        """A copy bound to a layer's column grouping [d] (int; every group exactly
        `group_size` columns, ids 0 .. d/group_size - 1)."""
        name = f"{type(self).__name__}.col_groups"
        g = check_groups(col_groups, None, self.group_size, name)
        return dataclasses.replace(self, col_groups=tuple(g.tolist()))

    def groups(self, d: int) -> np.ndarray:
        """col_groups as an int64 array [d] (ConfigError unless bound to d columns)."""
        name = f"{type(self).__name__}.col_groups"
        if self.col_groups is None:
            raise ConfigError(f"{name}: not bound to the layer's columns; use "
                              f".on_columns(conv_nm_groups(...) or linear_nm_groups(...))")
        if len(self.col_groups) != d:
            raise ConfigError(f"{name}: {len(self.col_groups)} columns grouped, which does "
                              f"not match the layer's {d} columns")
        return np.asarray(self.col_groups, dtype=np.int64)


@dataclass(frozen=True)
class NM(_Grouped):
    """n zeros in every group of m columns of every row (col_groups: groups of m)."""

    n: int
    m: int
    col_groups: tuple[int, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _integer(self.n, "NM.n", 1)
        _integer(self.m, "NM.m", 2)
        if self.n >= self.m:
            raise ConfigError(f"NM needs 0 < n < m, got n={self.n}, m={self.m} (e.g. NM(2, 4))")

    @property
    def group_size(self) -> int:
        return self.m

    @property
    def sparsity(self) -> float:
        return self.n / self.m

    def removals(self, G: int, r: int, d: int) -> int:
        return int(round(self.sparsity * G * r * d))


@dataclass(frozen=True)
class Blocks(_Grouped):
    """`sparsity` of the blocks of `size` columns (col_groups: block ids), selected globally
    across rows."""

    size: int
    sparsity: float
    col_groups: tuple[int, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _integer(self.size, "Blocks.size", 1)
        _fraction(self.sparsity, "Blocks.sparsity")

    @property
    def group_size(self) -> int:
        return self.size

    def removals(self, G: int, r: int, d: int) -> int:
        """Weights removed (a whole number of blocks)."""
        s = self.sparsity
        return self.size * int(round(s * G * r * d / self.size)) if s else 0


Structure = Union[Unstructured, NM, Blocks]  # the built-in kinds; the registry takes any type


# ----------------------------------------------------------------------------- groupings

def conv_nm_groups(cin_per_group: int, kernel: int, m: int) -> np.ndarray | None:
    """Group id [d] of every column of a Conv row (d = cin_per_group * kernel, C-major: column
    c*kernel + k is input channel c at kernel position k). Group (j, k) = channels
    j*m .. j*m+m-1 at kernel position k, id j*kernel + k. None if m does not divide
    cin_per_group (the layer cannot be N:M / block structured on its input channels)."""
    if m <= 0 or cin_per_group <= 0 or kernel <= 0 or cin_per_group % m:
        return None
    c = np.arange(cin_per_group)[:, None]  # [C, 1]
    k = np.arange(kernel)[None, :]  # [1, K]
    return ((c // m) * kernel + k).reshape(-1).astype(np.int64)  # [C*K]


def linear_nm_groups(d: int, m: int) -> np.ndarray | None:
    """Group id [d] for a MatMul/Gemm row (d = K, the reduction axis): m consecutive columns
    per group. None if m does not divide d."""
    if m <= 0 or d <= 0 or d % m:
        return None
    return (np.arange(d) // m).astype(np.int64)


def check_groups(col_groups: Any, d: int | None, size: int, what: str) -> np.ndarray:
    """col_groups [d] (host or device) as int64 on the host, or ConfigError (a ValueError)
    unless it is an integer array of d columns (any d when None) whose groups all have
    exactly `size` columns, ids 0 .. d/size - 1."""
    g = np.asarray(to_numpy(col_groups))
    d = g.shape[0] if d is None and g.ndim == 1 else d
    if g.shape != (d,) or g.dtype.kind not in "iu":
        raise ConfigError(f"{what}: expected an integer array of shape ({d},), got {g.shape} "
                          f"{g.dtype}")
    sizes = np.bincount(g, minlength=1) if d and g.min() >= 0 else np.zeros(0, dtype=np.int64)
    if d and (g.min() < 0 or np.any(sizes != size)):
        raise ConfigError(f"{what}: every group must have exactly {size} columns "
                          f"(ids 0 .. d/{size}-1)")
    return g.astype(np.int64)

