"""The fake device's array (see fakecupy.py): NumPy storage behind a CuPy-like boundary, and
the counters of what crosses it."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

COUNTS: Counter = Counter()
SITES: Counter = Counter()  # (kind, "path:line function") -> count
_FAKE = {str(Path(__file__).resolve().with_name(n)) for n in ("fakearray.py", "fakecupy.py")}
_ROOT = str(Path(__file__).resolve().parents[2]) + "/"
IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly.")


def reset() -> None:
    COUNTS.clear()
    SITES.clear()


def _site() -> str:
    """The first caller outside the fake, NumPy and onnx_obc/backend.py (which only moves
    what its caller asks for)."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if not (name in _FAKE or "/numpy/" in name or name.endswith("onnx_obc/backend.py")):
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
        from . import fakecupy

        fn = getattr(fakecupy, ufunc.__name__, None) if method == "__call__" else None
        if fn is None:
            return NotImplemented
        return fn(*inputs, **kwargs)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        from . import fakecupy

        mod = fakecupy.linalg if func.__module__.endswith("linalg") else fakecupy
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
    def __imatmul__(self, o: Any) -> ndarray:
        self._a[...] = self._a @ _unwrap(o)
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


def _inplace(ufunc: Any) -> Any:
    def op(self: ndarray, other: Any) -> ndarray:
        ufunc(self._a, _unwrap(other), out=self._a)
        return self

    return op


for _dunder, _uf in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                     ("truediv", np.true_divide), ("floordiv", np.floor_divide),
                     ("mod", np.remainder), ("pow", np.power), ("matmul", np.matmul),
                     ("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor),
                     ("lshift", np.left_shift), ("rshift", np.right_shift)):
    setattr(ndarray, f"__{_dunder}__", _binary(_uf))
    setattr(ndarray, f"__r{_dunder}__", _binary(_uf, reflected=True))
    if _dunder != "matmul":
        setattr(ndarray, f"__i{_dunder}__", _inplace(_uf))
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
