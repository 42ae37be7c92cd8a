"""onnx-obc: Optimal Brain Compression for ONNX models (ExactOBS pruning, OBQ quantization,
N:M / block sparsity, non-uniform levels), no retraining.

    from onnx_obc import convert
    result = convert("models/digits_cnn.onnx", "out.onnx", sparsity=0.5,
                     calib="models/digits_cnn.calib.npz")
    print(result.report.table())

The names below load on first use (PEP 562), so that importing the package or its command
line loads neither numpy nor onnx: cli.py sets process-wide options before they load
(BLAS_SPIN there), and `onnx-obc --help` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import (Allocation, CompressConfig, Correction, ExportOptions, Pruning,
                         Quantization, RunOptions, Selection, SolverOptions)
    from .errors import (CalibrationError, ConfigError, ModelError, NotPositiveDefinite,
                         ObcError)
    from .layers import find_layers
    from .pipeline import ConvertResult, convert
    from .report import Report

_FROM = {
    ".config": ("Allocation", "CompressConfig", "Correction", "ExportOptions", "Pruning",
                "Quantization", "RunOptions", "Selection", "SolverOptions"),
    ".errors": ("CalibrationError", "ConfigError", "ModelError", "NotPositiveDefinite",
                "ObcError"),
    ".layers": ("find_layers",),
    ".pipeline": ("ConvertResult", "convert"),
    ".report": ("Report",),
}
_MODULE = {name: module for module, names in _FROM.items() for name in names}

__version__ = "0.1.0"
__all__ = [
    "convert", "ConvertResult", "CompressConfig", "Selection", "Pruning", "Quantization",
    "SolverOptions", "Allocation", "Correction", "ExportOptions", "RunOptions", "Report",
    "find_layers",
    "ObcError", "ConfigError", "ModelError", "CalibrationError", "NotPositiveDefinite",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _MODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE})
