"""ExportOptions: where the quantized model is deployed (re-exported by specs.py, the
home of the other frozen option specs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

RUNTIMES = ("tensorrt", "onnxruntime")
ACT_TYPES = ("u8", "s8")


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """Where the quantized model is deployed, i.e. how the Q/DQ pairs are placed (export/).
    runtime "tensorrt": activation Q/DQ on the inputs of the quantized layers (and residual
    Adds), symmetric int8, as TensorRT's explicit quantization reads it; "onnxruntime": on
    the inputs and outputs of every node onnxruntime's CPU optimizer can fuse into an integer
    kernel (QLinearConv, QLinearMatMul, QGemm, QLinearAdd...), with int32 biases. act_type
    (onnxruntime): "u8" asymmetric (uint8, zero point) or "s8" symmetric int8 activations.
    matmul_nbits: <= 4-bit MatMul/Gemm weights as MatMulNBits (onnxruntime; export/nbits.py),
    nbits_block_size: its block along K, accuracy_level: 0 float activations, 4 int8 per
    block, None measured where the run writes MatMulNBits (nbitslevel.py; else 0).
    dynamic_lstm (onnxruntime, with activation quantization): LSTMs as
    com.microsoft.DynamicQuantizeLSTM, int8 weights per row (export/ortlstm.py).
    float_stem (onnxruntime, 8-bit activations): the image stem's Convs (and a narrow
    depthwise Conv after them) stay float where the run measures a lower output error so
    (export/ortstem.py, floatcheck.py); False quantizes them too. float_highres (likewise):
    the Convs at stride <= 4 stay float where the run measures a much lower output error
    at about the same latency, then likewise those at stride 8 (export/orthires.py).
    float_heads (likewise): a Conv whose output only feeds graph outputs (a detector's box
    convs) stays float where the run measures an output error more than 2% lower so at
    about the same latency (export/onnxruntime.head_convs); False quantizes them.
    quantize_tables (onnxruntime, with quantized weights): float [V, D] lookup tables read
    only by Gathers (word embeddings) stored as GatherBlockQuantized codes, 8 bits, or 4
    where every quantized layer has at most 4 (export/orttables.py); False keeps them float.
    float_layers: glob patterns on layer node names; those layers are solved with the rest
    and written float, unquantized, as a float candidate kept float is (floatcheck.py: with
    their zeros in a run that prunes; the layers after them fitted as with them quantized).
    Unlike select.exclude, which leaves a layer out of every stage."""

    runtime: str = "tensorrt"
    act_type: str = "u8"
    matmul_nbits: bool = True
    nbits_block_size: int | None = None
    accuracy_level: int | None = None
    dynamic_lstm: bool = True
    float_stem: bool = True
    float_highres: bool = True
    float_heads: bool = True
    quantize_tables: bool = True
    float_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.float_layers, tuple) or not all(
                isinstance(x, str) for x in self.float_layers):
            raise ConfigError(f"export.float_layers must be a tuple of strings (glob patterns "
                              f"on layer node names), got {self.float_layers!r}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"export.runtime must be one of {', '.join(RUNTIMES)}, got "
                              f"{self.runtime!r}")
        for flag in ("matmul_nbits", "dynamic_lstm", "float_stem", "float_highres",
                     "float_heads", "quantize_tables"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"export.{flag} must be true or false, got "
                                  f"{getattr(self, flag)!r}")
        if self.act_type not in ACT_TYPES:
            raise ConfigError(f"export.act_type must be one of {', '.join(ACT_TYPES)}, got "
                              f"{self.act_type!r}")
        b = self.nbits_block_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 16
                              or b & (b - 1)):
            raise ConfigError(f"export.nbits_block_size must be a power of two >= 16 (16, 32, "
                              f"64, 128...), got {b!r}")
        if self.accuracy_level not in (None, 0, 1, 2, 3, 4) or isinstance(self.accuracy_level,
                                                                           bool):
            raise ConfigError(f"export.accuracy_level must be 0, 1, 2, 3, 4 or None, got "
                              f"{self.accuracy_level!r}")

    def float_options(self) -> dict[str, Any]:
        """The keyword options of the target's float_candidates (floatcheck.py)."""
        return {"float_stem": self.float_stem, "float_highres": self.float_highres,
                "float_heads": self.float_heads}

    def target_options(self) -> dict[str, Any]:
        """The keyword options of the target's deploy (export.build)."""
        if self.runtime != "onnxruntime":
            return {}
        return {"act_type": self.act_type, "matmul_nbits": self.matmul_nbits,
                "nbits_block_size": self.nbits_block_size,
                "accuracy_level": self.accuracy_level or 0,  # None: measured (nbitslevel.py)
                "dynamic_lstm": self.dynamic_lstm, "tables": self.quantize_tables}
