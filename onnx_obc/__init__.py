"""onnx-obc: Optimal Brain Compression for ONNX models (ExactOBS pruning, OBQ quantization,
N:M / block sparsity, non-uniform levels), no retraining.

    from onnx_obc import convert
    result = convert("in.onnx", "out.onnx", sparsity=0.5, calib="calib.npz")
    print(result.report.table())
"""

from .config import CompressConfig
from .errors import CalibrationError, ConfigError, ModelError, NotPositiveDefinite, ObcError
from .layers import find_layers
from .pipeline import ConvertResult, convert
from .report import Report

__version__ = "0.1.0"
__all__ = [
    "convert", "ConvertResult", "CompressConfig", "Report", "find_layers", "ObcError",
    "ConfigError", "ModelError", "CalibrationError", "NotPositiveDefinite", "__version__",
]
