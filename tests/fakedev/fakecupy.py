"""A strict fake CuPy for CI: NumPy arithmetic behind a device boundary that counts crossings.

`ndarray` wraps a numpy array the way a cupy.ndarray holds device memory: NumPy refuses to
convert it implicitly (`np.asarray(x)`, `np.array(x)`, `x.__array__()` raise CuPy's
TypeError), binary operations and the functions of this module refuse host (NumPy) array
operands ("Unsupported type", as CuPy's ufuncs do), and reductions return 0-d device arrays
instead of NumPy scalars. What crosses the boundary is counted in `COUNTS` and, per call
site in the package, in `SITES`:

    h2d           asarray / array of host data (an explicit copy to the device)
    h2d_implicit  a host array or list used as an index or assigned into a device array
                  (CuPy copies it silently)
    d2h           .get() / asnumpy / .tolist() (a copy to the host)
    sync          the host waits for a device value: bool / int / float / index / .item() of
                  a device array, shapes that depend on data (nonzero, boolean-mask reads,
                  unique, bincount without minlength), stream synchronize

Numerics are NumPy's, so a run on this device is bit-identical to the NumPy run unless the
package branches on the array module. Stricter than CuPy on purpose in one place: host
arrays passed to this module's functions raise instead of being copied silently (CuPy copies
some, e.g. take_along_axis indices); they would be hidden transfers.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np

from .fakearray import COUNTS, SITES, _count, _unwrap, _wrap, ndarray, reset

__all__ = ["COUNTS", "SITES", "ndarray", "reset"]


def _device(fn: Any, name: str, sync: bool = False) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        out = fn(*_unwrap(args), **_unwrap(kwargs))
        if sync:
            _count("sync")
        return _wrap(out)

    call.__name__ = call.__qualname__ = name
    return call


# ---------------------------------------------------------------- creation and transfers

def asarray(a: Any, dtype: Any = None, order: Any = None) -> ndarray:
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    _count("h2d")
    return ndarray(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(a: Any, dtype: Any = None, copy: bool = True, order: Any = "K", ndmin: int = 0
          ) -> ndarray:
    if isinstance(a, ndarray):
        return ndarray(np.array(a._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    _count("h2d")
    return ndarray(np.array(a, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a: Any) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    if not isinstance(a, ndarray):
        raise TypeError(f"Unsupported type {type(a)}")
    return ndarray(np.ascontiguousarray(a._a, dtype=dtype))


_PLAIN = """
abs absolute add allclose amax amin arange arccos arcsin arctan arctan2 argmax argmin argsort
argpartition around array_equal atleast_1d atleast_2d broadcast_arrays broadcast_to ceil clip
concatenate copy copysign cos count_nonzero cumprod cumsum diag diagonal diff divide dot einsum
empty empty_like equal exp expand_dims eye floor floor_divide fmax fmin full full_like greater
greater_equal hypot identity invert isclose isfinite isinf isnan kron less less_equal linspace
log log10 log1p log2 logical_and logical_not logical_or logical_xor matmul max maximum mean
median min minimum mod moveaxis multiply negative not_equal ones ones_like outer pad partition
positive power prod ptp ravel reciprocal remainder repeat reshape rint round sign sort split
sqrt square squeeze stack std subtract sum swapaxes take take_along_axis tile trace transpose
tril triu true_divide trunc var vstack hstack where zeros zeros_like bitwise_and bitwise_or
bitwise_xor left_shift right_shift
""".split()
for _name in _PLAIN:
    globals()[_name] = _device(getattr(np, _name), _name)
for _name in ("nonzero", "unique", "argwhere", "flatnonzero"):
    globals()[_name] = _device(getattr(np, _name), _name, sync=True)


def argsort(a: Any, axis: int = -1, kind: Any = None) -> ndarray:
    if kind not in (None, "stable"):  # CuPy sorts stably and takes no other kind
        raise ValueError(f"kind {kind!r} is not supported by CuPy's argsort")
    return ndarray(np.argsort(_unwrap(a), axis=axis, kind="stable"))


def bincount(x: Any, weights: Any = None, minlength: int = 0) -> ndarray:
    _count("sync")  # CuPy reads max(x) on the host to size the output
    return ndarray(np.bincount(_unwrap(x), _unwrap(weights), minlength))


def array_equal(a1: Any, a2: Any, equal_nan: bool = False) -> ndarray:
    return ndarray(np.asarray(np.array_equal(_unwrap(a1), _unwrap(a2), equal_nan=equal_nan)))


# dtypes, constants and host-side helpers CuPy re-exports from NumPy
for _name in ("float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 "
              "bool_ complex64 complex128 inf nan pi e newaxis finfo iinfo dtype "
              "result_type promote_types can_cast issubdtype integer floating").split():
    globals()[_name] = getattr(np, _name)
ndim = np.ndim
shape = np.shape


# ---------------------------------------------------------------- linalg

def _cholesky(a: Any) -> ndarray:
    """cuSOLVER does not raise on a matrix that is not positive definite: NaN factor."""
    A = _unwrap(a)
    try:
        return ndarray(np.linalg.cholesky(A))
    except np.linalg.LinAlgError:
        return ndarray(np.full(A.shape, np.nan, dtype=A.dtype))


linalg = types.ModuleType(__name__ + ".linalg")
for _name in ("inv", "solve", "eigh", "eigvalsh", "norm", "det", "slogdet", "qr", "svd",
              "pinv", "lstsq", "matrix_power", "matrix_rank"):
    setattr(linalg, _name, _device(getattr(np.linalg, _name), _name))
linalg.cholesky = _cholesky
linalg.LinAlgError = np.linalg.LinAlgError


# ---------------------------------------------------------------- cuda / memory pool

class _Stream:
    def synchronize(self) -> None:
        _count("sync")


class _Pool:
    def free_all_blocks(self) -> None:
        COUNTS["free"] += 1

    def free_bytes(self) -> int:
        return 0

    def used_bytes(self) -> int:
        return 0


_POOL = _Pool()
FREE_BYTES = 4 << 30  # what memGetInfo reports as free


def get_default_memory_pool() -> _Pool:
    return _POOL


class _Device:
    id = 0

    def synchronize(self) -> None:
        _count("sync")


cuda = types.SimpleNamespace(
    get_current_stream=lambda: _Stream(),
    Device=lambda *a: _Device(),
    runtime=types.SimpleNamespace(
        memGetInfo=lambda: (FREE_BYTES, 2 * FREE_BYTES),
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"fake device (NumPy behind a boundary)"},
    ),
)


def get_array_module(*args: Any) -> Any:
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np
