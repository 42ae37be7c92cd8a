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
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

COUNTS: Counter = Counter()
SITES: Counter = Counter()  # (kind, "path:line function") -> count
_HERE = str(Path(__file__).resolve())
_ROOT = str(Path(__file__).resolve().parents[2]) + "/"
IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly.")


def reset() -> None:
    COUNTS.clear()
    SITES.clear()


def _site() -> str:
    """The first caller outside this file, NumPy and onnx_obc/backend.py (which only moves
    what its caller asks for)."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if name != _HERE and "/numpy/" not in name and not name.endswith("onnx_obc/backend.py"):
            return f"{name.replace(_ROOT, '')}:{f.f_lineno} {f.f_code.co_name}"
        f = f.f_back
    return "?"


def _count(kind: str, n: int = 1) -> None:
    COUNTS[kind] += n
    SITES[(kind, _site())] += n


class ndarray:
    """A device array: NumPy storage the host cannot read without an explicit .get()."""

    __slots__ = ("_a",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    # ---- the boundary
    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(IMPLICIT)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        fn = globals().get(ufunc.__name__) if method == "__call__" else None
        if fn is None:
            return NotImplemented
        return fn(*inputs, **kwargs)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        mod = linalg if func.__module__.endswith("linalg") else sys.modules[__name__]
        fn = getattr(mod, func.__name__, None)
        if fn is None:
            return NotImplemented
        return fn(*args, **kwargs)

    def get(self) -> np.ndarray:
        _count("d2h")
        return self._a.copy()

    def tolist(self) -> Any:
        _count("d2h")
        return self._a.tolist()

    def item(self) -> Any:
        _count("sync")
        return self._a.item()

    def _scalar(self, kind: type) -> Any:
        _count("sync")
        return kind(self._a)

    def __bool__(self) -> bool:
        return self._scalar(bool)

    def __float__(self) -> float:
        return self._scalar(float)

    def __int__(self) -> int:
        return self._scalar(int)

    def __index__(self) -> int:
        if self._a.dtype.kind not in "iub":
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        return self._scalar(int)

    def __complex__(self) -> complex:
        return self._scalar(complex)

    def __repr__(self) -> str:
        return f"fakecupy.ndarray(shape={self._a.shape}, dtype={self._a.dtype})"

    def __iter__(self) -> Any:
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (ndarray(self._a[i]) for i in range(self._a.shape[0]))

    def __len__(self) -> int:
        return len(self._a)

    # ---- metadata (host-side, free)
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))

    # ---- arithmetic (NumPy's, on the device; host array operands raise)
    def __iadd__(self, o: Any) -> ndarray:
        return self._inplace(np.add, o)

    def __isub__(self, o: Any) -> ndarray:
        return self._inplace(np.subtract, o)

    def __imul__(self, o: Any) -> ndarray:
        return self._inplace(np.multiply, o)

    def __itruediv__(self, o: Any) -> ndarray:
        return self._inplace(np.true_divide, o)

    def __ifloordiv__(self, o: Any) -> ndarray:
        return self._inplace(np.floor_divide, o)

    def __imod__(self, o: Any) -> ndarray:
        return self._inplace(np.remainder, o)

    def __ipow__(self, o: Any) -> ndarray:
        return self._inplace(np.power, o)

    def __iand__(self, o: Any) -> ndarray:
        return self._inplace(np.bitwise_and, o)

    def __ior__(self, o: Any) -> ndarray:
        return self._inplace(np.bitwise_or, o)

    def __ixor__(self, o: Any) -> ndarray:
        return self._inplace(np.bitwise_xor, o)

    def __imatmul__(self, o: Any) -> ndarray:
        self._a[...] = self._a @ _unwrap(o)
        return self

    def _inplace(self, ufunc: Any, o: Any) -> ndarray:
        ufunc(self._a, _unwrap(o), out=self._a)
        return self

    def __neg__(self) -> ndarray:
        return ndarray(-self._a)

    def __pos__(self) -> ndarray:
        return ndarray(+self._a)

    def __abs__(self) -> ndarray:
        return ndarray(abs(self._a))

    def __invert__(self) -> ndarray:
        return ndarray(~self._a)

    # ---- indexing
    def __getitem__(self, key: Any) -> ndarray:
        key = _index(key)
        if _has_mask(key):
            _count("sync")  # the result's shape depends on the mask's contents
        return _wrap(self._a[key])

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, (np.ndarray, list, tuple)):
            _count("h2d_implicit")
        self._a[_index(key)] = _unwrap(value, host_ok=True)

    def __getattr__(self, name: str) -> Any:
        if name not in _METHODS:
            raise AttributeError(f"fakecupy.ndarray has no attribute {name!r}")
        method = getattr(self._a, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            out = method(*_unwrap(args), **_unwrap(kwargs))
            if name in ("nonzero",):
                _count("sync")
            return _wrap(out)

        return call


def _binary(ufunc: Any, reflected: bool = False) -> Any:
    def op(self: ndarray, other: Any) -> Any:
        if isinstance(other, np.ndarray):
            raise TypeError(f"Unsupported type {type(other)}")
        o = _unwrap(other)
        return _wrap(ufunc(o, self._a) if reflected else ufunc(self._a, o))

    return op


for _dunder, _uf in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                     ("truediv", np.true_divide), ("floordiv", np.floor_divide),
                     ("mod", np.remainder), ("pow", np.power), ("matmul", np.matmul),
                     ("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor),
                     ("lshift", np.left_shift), ("rshift", np.right_shift)):
    setattr(ndarray, f"__{_dunder}__", _binary(_uf))
    setattr(ndarray, f"__r{_dunder}__", _binary(_uf, reflected=True))
for _dunder, _uf in (("lt", np.less), ("le", np.less_equal), ("gt", np.greater),
                     ("ge", np.greater_equal), ("eq", np.equal), ("ne", np.not_equal)):
    setattr(ndarray, f"__{_dunder}__", _binary(_uf))

_METHODS = frozenset(
    "all any argmax argmin argpartition argsort astype clip conj copy cumprod cumsum diagonal "
    "dot fill flatten max mean min nonzero partition prod ravel repeat reshape round sort "
    "squeeze std sum swapaxes take trace transpose var view".split())


def _unwrap(x: Any, host_ok: bool = False) -> Any:
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and not host_ok:
        raise TypeError(f"Unsupported type {type(x)}")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, host_ok) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, host_ok) for k, v in x.items()}
    return x


def _wrap(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, np.generic):
        return ndarray(np.asarray(x))  # CuPy reductions and scalar reads give 0-d arrays
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _index(key: Any) -> Any:
    """A device index for NumPy; host arrays and lists in it count as implicit copies."""
    parts = key if isinstance(key, tuple) else (key,)
    out = []
    for k in parts:
        if isinstance(k, ndarray):
            out.append(k._a)
        elif isinstance(k, (np.ndarray, list)):
            _count("h2d_implicit")
            out.append(np.asarray(k))
        else:
            out.append(k)
    return tuple(out) if isinstance(key, tuple) else out[0]


def _has_mask(key: Any) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, np.ndarray) and k.dtype == bool for k in parts)


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
