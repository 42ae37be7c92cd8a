"""onnxruntime's `quantize_static` as the bench runs it (QDQ, per channel, MinMax, uint8
activations / int8 weights, 7-bit ones where the CPU lacks VNNI; models below opset 13
converted to 13 first, as per-channel QDQ needs), in a module that imports only numpy,
onnx and onnxruntime (and onnx_obc/cpu.py, platform and pathlib only): timing it as its own
process (bench/w8_cpu.py, bench/w8_speed.py) then counts what a user of `quantize_static`
pays, not onnx-obc's imports (bench/deploy.py imported onnx_obc; it now imports these from
here).
"""

from __future__ import annotations

import onnx


def _inputs(model: onnx.ModelProto, data: dict) -> list[str]:
    init = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in init]


def _batches(model: onnx.ModelProto, data: dict, n: int) -> list[dict]:
    """Runs of 16 samples (1 where the batch is fixed at 1); an input whose dimensions are
    all fixed while another's are not (an RNN state such as AECMOS's h0 [4, 1, 96]) is fed
    whole, and then one sample a run (such a state usually pins the batch at 1)."""
    names = _inputs(model, data)
    dims = {i.name: i.type.tensor_type.shape.dim for i in model.graph.input if i.name in names}
    free = {k for k, ds in dims.items() if any(not d.HasField("dim_value") for d in ds)}
    whole = {k for k in names if free and k not in free}
    fixed = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    step = 1 if fixed or whole else 16
    return [{k: data[k] if k in whole else data[k][i:min(i + step, n)] for k in names}
            for i in range(0, n, step)]


def quantize_static(src: str, out: str, calib: dict, model: onnx.ModelProto,
                    reduce_range: bool | None = None) -> None:
    """`reduce_range` (7-bit weights) None: where this CPU saturates onnxruntime's uint8 x
    int8 kernels (x86 without VNNI, onnx_obc/cpu.py), as onnxruntime's documentation
    advises there and as onnx-obc's --reduce-range auto does; before 2026-12-07 never."""
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
    )
    from onnxruntime.quantization import quantize_static as qs

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        m13 = version_converter.convert_version(model, 13)
        src = out + ".opset13.onnx"
        onnx.save(m13, src)
    feeds = _batches(model, calib, len(next(iter(calib.values()))))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.it, None)

    if reduce_range is None:
        from onnx_obc.cpu import saturating_cpu
        reduce_range = saturating_cpu()
    qs(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
       activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
       calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range)
