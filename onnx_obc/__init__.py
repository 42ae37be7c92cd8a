"""onnx-obc: Optimal Brain Compression for ONNX models (ExactOBS pruning, OBQ quantization,
N:M / block sparsity, non-uniform levels), no retraining.

    from onnx_obc import convert
    result = convert("models/digits_cnn.onnx", "out.onnx", sparsity=0.5,
                     calib="models/digits_cnn.calib.npz")
    print(result.report.table())
"""

from .config import (Allocation, CompressConfig, Correction, ExportOptions, Pruning,
                     Quantization, RunOptions, Selection, SolverOptions)
from .errors import CalibrationError, ConfigError, ModelError, NotPositiveDefinite, ObcError
from .layers import find_layers
from .pipeline import ConvertResult, convert
from .report import Report

__version__ = "0.1.0"
__all__ = [
    "convert", "ConvertResult", "CompressConfig", "Selection", "Pruning", "Quantization",
    "SolverOptions", "Allocation", "Correction", "ExportOptions", "RunOptions", "Report",
    "find_layers",
    "ObcError", "ConfigError", "ModelError", "CalibrationError", "NotPositiveDefinite",
    "__version__",
]
