"""The one place that knows CuPy exists.

Everything else gets its array module from its arrays (`array_module(x)`) and moves data
between host and device only through a `Backend`. Solver code sticks to the subset of
functions NumPy and CuPy share with the same meaning: matmul, linalg.cholesky (lower),
linalg.inv, linalg.solve (batched), argmin/argsort, take_along_axis, where, diagonal,
cumsum, maximum.accumulate is NOT shared (use `cummax` below).

CuPy's cuSOLVER Cholesky does not raise on a non-positive-definite matrix: `cholesky`
here checks the factor and raises `numpy.linalg.LinAlgError` on both backends.
TF32 stays off: CuPy only uses it when CUPY_TF32 > 0, which we never set.

Tests stand a strict fake device in for CuPy (`stand_in_device`, tests/fakedev/): arrays
that refuse implicit conversion to NumPy and count every host<->device crossing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .errors import DeviceError

_STAND_IN: dict[type, Backend] = {}  # array type -> its stand-in device (tests only)

# Layers narrower than this are solved on the host even when a GPU is in use (the capture's
# Hessian products stay on it). On an H200 against its 16-core host every solve measured up
# to 4,096 columns was slower on the GPU: 50% ExactOBS 0.01-0.81x, SparseGPT 0.07-0.83x,
# 4-bit OBQ 10-40x slower on the real models' layers (docs/numerics.md "GPU"); the ratio rises
# with d.
DEVICE_MIN_COLUMNS = 8192


def array_module(*arrays: Any) -> ModuleType:
    """numpy, or cupy when any argument is a CuPy array (without importing CuPy otherwise),
    or a stand-in device's module for its arrays."""
    for a in arrays:
        t = type(a)
        if t.__module__.split(".")[0] == "cupy":
            return sys.modules["cupy"]
        if t in _STAND_IN:
            return _STAND_IN[t].xp
    return np


def to_numpy(a: Any) -> np.ndarray:
    """A host NumPy copy/view of `a`, whatever its module."""
    t = type(a)
    if t.__module__.split(".")[0] == "cupy" or t in _STAND_IN:
        return a.get()
    return np.asarray(a)


@contextmanager
def stand_in_device(name: str, module: ModuleType, array_type: type) -> Iterator[Backend]:
    """Within the block `module` (a CuPy look-alike whose arrays are `array_type`) is the
    device: array_module recognises its arrays, to_numpy copies them back with `.get()`,
    and get_backend("auto" / "cuda") returns a Backend on it instead of CuPy. For tests: a
    strict fake device checks the device path on a machine without a GPU."""
    backend = Backend(name, module, min_columns=0)  # every layer on it: the device path
    _STAND_IN[array_type] = backend
    try:
        yield backend
    finally:
        del _STAND_IN[array_type]


def cholesky(A: Any) -> Any:
    """Lower Cholesky factor of (a stack of) SPD matrices; LinAlgError if not SPD."""
    xp = array_module(A)
    L = xp.linalg.cholesky(A)
    if xp is not np and not bool(xp.isfinite(L).all()):
        raise np.linalg.LinAlgError("Matrix is not positive definite")
    return L


def cummax(a: Any, axis: int = -1) -> Any:
    """Running maximum along `axis` (numpy.maximum.accumulate; CuPy lacks ufunc.accumulate)."""
    xp = array_module(a)
    if xp is np:
        return np.maximum.accumulate(a, axis=axis)
    out = a.copy()
    out = xp.moveaxis(out, axis, 0)
    for i in range(1, out.shape[0]):
        xp.maximum(out[i], out[i - 1], out=out[i])
    return xp.moveaxis(out, 0, axis)


@dataclass(frozen=True)
class Backend:
    """Where solver arrays live. `name` is "numpy", "cupy" or a stand-in device's name (its
    `xp` then mimics CuPy's module, cuda runtime and memory pool included)."""

    name: str
    xp: ModuleType
    min_columns: int | None = None  # narrower layers are solved on the host (None: default)

    @property
    def on_device(self) -> bool:
        return self.name != "numpy"

    def to_device(self, a: Any) -> Any:
        """`a` (host or device) on this backend: the host backend copies device arrays back."""
        return self.xp.asarray(a) if self.on_device else to_numpy(a)

    def for_width(self, d: int) -> Backend:
        """Where to solve a layer of d input columns: this device from `min_columns`
        (default DEVICE_MIN_COLUMNS) on, the host below it (the greedy solvers' per-column
        steps are kernel launches)."""
        return self if not self.on_device or d >= self.least_columns else Backend("numpy", np)

    @property
    def least_columns(self) -> int:
        """The narrowest layer solved on this device (min_columns, or DEVICE_MIN_COLUMNS)."""
        return DEVICE_MIN_COLUMNS if self.min_columns is None else self.min_columns

    def to_host(self, a: Any) -> np.ndarray:
        return to_numpy(a)

    def sync(self) -> None:
        if self.on_device:
            self.xp.cuda.get_current_stream().synchronize()

    def label_for(self, widths: list[int]) -> str:
        """device_label, and how many of the solved layers (their input widths) for_width
        put on the host."""
        host = sum(self.for_width(d) is not self for d in widths)
        if not host:
            return self.device_label
        return (f"{self.device_label}; {host} of {len(widths)} layers (those under "
                f"{self.least_columns:,} inputs) solved on the host, which is faster for them")

    def free(self) -> None:
        if self.on_device:
            self.xp.get_default_memory_pool().free_all_blocks()

    def free_bytes(self) -> int | None:
        """Free device memory (CuPy), None on the host."""
        if not self.on_device:
            return None
        free, _ = self.xp.cuda.runtime.memGetInfo()
        return int(free) + int(self.xp.get_default_memory_pool().free_bytes())

    @property
    def device_label(self) -> str:
        if self.name == "numpy":
            return "cpu (NumPy)"
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"cuda (CuPy, {name})" if self.name == "cupy" else f"{self.name} ({name})"


def _cupy_or_reason() -> tuple[ModuleType | None, str]:
    try:
        import cupy  # the only CuPy import in the package
    except Exception as exc:  # ImportError, or a broken CUDA install
        return None, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "CuPy sees no CUDA device"
        cupy.zeros(1).sum()  # touches the driver and the runtime
    except Exception as exc:
        return None, f"CuPy cannot use the GPU ({type(exc).__name__}: {exc})"
    return cupy, ""


def get_backend(device: str = "auto") -> Backend:
    """Backend for "auto" (CuPy if usable, else NumPy), "cpu" or "cuda"."""
    if device == "cpu":
        return Backend("numpy", np)
    if _STAND_IN:
        return next(iter(_STAND_IN.values()))
    cupy, reason = _cupy_or_reason()
    if cupy is not None:
        return Backend("cupy", cupy)
    if device == "cuda":
        raise DeviceError(
            f"--device cuda was requested but {reason}. Install the GPU extra "
            "(pip install 'onnx-obc[gpu]', i.e. cupy-cuda12x) on a machine with an NVIDIA GPU, "
            "or use --device cpu."
        )
    return Backend("numpy", np)
