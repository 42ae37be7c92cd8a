"""CLI flags <-> the recipe's fields: building a CompressConfig from the `compress` options
(and a recipe file), and rewriting field names in error messages into the flags a CLI user
types (`prune.sparsity` -> `--sparsity`)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import click
from click.core import ParameterSource

from .config import FLAT, CompressConfig
from .errors import ConfigError

# click parameter -> (flat option name, how the flag's value becomes the option's)
_PARAM: dict[str, tuple[str, Any]] = {
    "asymmetric": ("symmetric", lambda v: not v),
    "minmax": ("clip_search", lambda v: not v),
    "act_bits": ("act_bits", lambda v: None if v is None else int(v)),
    "memory_budget": ("memory_budget_mb", None),
    "solver_memory": ("solver_memory_mb", None),
    "time_budget": ("time_budget_s", None),
    "baseline": ("compare_baseline", None),
}


def _flat(param: str) -> str:
    return _PARAM.get(param, (param, None))[0]


def load_recipe(path: str) -> CompressConfig:
    """A recipe file: JSON {section: {field: value}} (the `config` of a report also works)."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the recipe {path!r}: {exc}. A recipe is JSON like "
                          '{"prune": {"sparsity": 0.5}, "quant": {"bits": 4}}') from None
    if isinstance(d, dict) and "config" in d and isinstance(d["config"], dict):
        d = d["config"]  # a report written with --report
    return CompressConfig.from_dict(d)


def config_from_flags(ctx: click.Context, recipe: str | None, opts: dict[str, Any]
                      ) -> CompressConfig:
    """The recipe's config (or the defaults) with the command-line options applied; with a
    recipe, only the options given on the command line override it."""
    base = load_recipe(recipe) if recipe else None
    options = {}
    for param, value in opts.items():
        if base is not None and ctx.get_parameter_source(param) not in (
                ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        name, convert = _PARAM.get(param, (param, None))
        options[name] = convert(value) if convert else value
    return CompressConfig.from_options(base, **options)


def _field_flags() -> dict[str, str]:
    """'section.field' -> '--flag' for every option of the `compress` command."""
    from .cli import compress

    out = {}
    for p in compress.params:
        if isinstance(p, click.Option) and _flat(p.name) in FLAT:
            s, f = FLAT[_flat(p.name)]
            out[f"{s}.{f}"] = max(p.opts, key=len)
    out["alloc.mode dp"] = "--allocate dp"
    return out


def flags_in(message: str) -> str:
    """`message` with the recipe's field names replaced by the CLI's flags."""
    table = _field_flags()
    names = sorted(table, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(n) for n in names) + r")\b")
    return pattern.sub(lambda m: table[m.group(1)], message)


def view_options(command: Any) -> Any:
    """The `compress` options of the report views: --sensitivity (a RunOptions field),
    --plot and --html (convert's `plot` / `html`, not in the recipe)."""
    command = click.option(
        "--html", type=click.Path(dir_okay=False),
        help="Also write the report as one self-contained HTML page (the figure and the "
             "tables). Needs matplotlib: pip install onnx-obc[plot].")(command)
    command = click.option(
        "--plot", type=click.Path(dir_okay=False),
        help="Also write the report as a figure (.png, .svg or .pdf): per-layer loss ratio, "
             "level, data-limited flag, sensitivity, the DP's error-versus-budget curve. "
             "Needs matplotlib: pip install onnx-obc[plot].")(command)
    return click.option(
        "--sensitivity", is_flag=True,
        help="Also measure each layer alone: the output error on the held-out samples with "
             "only that layer compressed, ranked, with the --exclude flags for the layers "
             "to leave dense first.")(command)


def engine_options(f: Any) -> Any:
    """The `compress` options of the engine (RunOptions engine, workers, ray_address)."""
    for option in reversed((
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True,
                     help="Where the layer solves run: here one after another, or as Ray tasks "
                          "on many workers (pip install onnx-obc[ray]); same output bytes."),
        click.option("--workers", type=click.IntRange(min=1),
                     help="With --engine ray: tasks in flight (and the CPUs of a local Ray "
                          "started here; default all)."),
        click.option("--ray-address", metavar="ADDR",
                     help="With --engine ray: a running Ray cluster (HEAD:6379); default "
                          "RAY_ADDRESS, else a local Ray."))):
        f = option(f)
    return f


_CALIB_OPTIONS = [
    click.option("--calib", type=click.Path(exists=True),
                 help=".npz/.npy (samples along the model's sample axis; memory-mapped) or a "
                      "directory of per-sample .npz/.npy files or images, read one at a time. "
                      "Without it, random inputs are used (not representative)."),
    click.option("--calib-samples", type=click.IntRange(min=1),
                 help="Use at most N samples (the data is not read past them)."),
    click.option("--correct-samples", type=click.IntRange(min=1),
                 help="The bias correction measures a seeded N of the calibration samples "
                      "(default all): its time falls with N, its gain too on average."),
    click.option("--calib-preprocess", metavar="SPEC",
                 help="How files of a --calib directory become input: resize=224,crop=224,"
                      "mean=0.485:0.456:0.406,std=0.229:0.224:0.225,layout=nchw (scale, color) "
                      "or module:function (path -> array or {input: array})."),
    click.option("--calib-sample-axis", "calib_sample_axes", metavar="INPUT=AXIS,...",
                 help="Override the sample axis read from the model's symbolic dimensions "
                      "(INPUT=none: fed whole to every run)."),
    click.option("--token-mask", metavar="auto|none|INPUT", default="auto", show_default=True,
                 help="The input marking a padded sequence's tokens (1) and padding (0): the "
                      "Hessians, activation ranges, smoothing statistics and per-token outputs' "
                      "fidelity leave the padding out. auto: an input named *attention_mask* "
                      "or *input_mask* of 0/1 values."),
    click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                 help="Samples per onnxruntime run (capture, correction and verification "
                      "run at most 8 where the model's batch is free, and a batch fixed at 1 "
                      "runs batch-free 8 at a time: faster and lighter)."),
]


def _with(options: list[Any], command: Any) -> Any:
    """`command` with `options`, in this order on its --help."""
    for option in reversed(options):
        command = option(command)
    return command


def calib_options(command: Any) -> Any:
    """The calibration-data options of `compress`."""
    return _with(_CALIB_OPTIONS, command)


_EXPORT_OPTIONS = [
    click.option("--fold/--no-fold", default=True, show_default=True,
                 help="First fold BatchNormalization and per-channel Mul/Add/Sub/Div into the "
                      "layers and write hardswish as one HardSwish, opset 14 (float-exact; faster "
                      "on onnxruntime, and the solvers see the deployed weights)."),
    click.option("--runtime", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt",
                 show_default=True,
                 help="Where the quantized model runs, i.e. how Q/DQ are placed: tensorrt (Q/DQ on "
                      "layer inputs, symmetric int8) or onnxruntime (inputs and outputs of every "
                      "op its CPU optimizer fuses into integer kernels: QLinearConv, QLinearMatMul"
                      ", QGemm, QLinearAdd...; int32 biases)."),
    click.option("--act-type", type=click.Choice(["u8", "s8"]), default="u8", show_default=True,
                 help="With --runtime onnxruntime: uint8 asymmetric activations (fastest on x86) "
                      "or int8 symmetric."),
    click.option("--reduce-range", type=click.Choice(["auto", "on", "off"]), default="auto",
                 show_default=True,
                 help="With --bits 8: on stores 7-bit weight codes, which onnxruntime's uint8 x "
                      "int8 CPU kernels cannot saturate on x86 without VNNI; auto: on with "
                      "--act-bits 8 --runtime onnxruntime when this CPU is such a one."),
    click.option("--matmul-nbits/--no-matmul-nbits", default=True, show_default=True,
                 help="With --runtime onnxruntime: MatMul/Gemm weights of <= 4 bits as "
                      "com.microsoft.MatMulNBits (Conv weights: codes dequantized once at load)."),
    click.option("--nbits-block-size", type=click.IntRange(min=16),
                 help="MatMulNBits block along K, a power of two >= 16 dividing --group-size "
                      "(default: the group size, or K up to 128)."),
    click.option("--accuracy-level", type=click.IntRange(0, 4),
                 help="MatMulNBits accuracy_level: 0 float activations, 4 int8 per block "
                      "(faster for wide layers and many tokens); default: level 4 where the "
                      "run measures it 5% faster or more and its output error at most 2% "
                      "plus half the latency share it saves above level 0's."),
    click.option("--dynamic-lstm/--no-dynamic-lstm", default=True, show_default=True,
                 help="With --runtime onnxruntime and --act-bits 8: LSTMs as "
                      "com.microsoft.DynamicQuantizeLSTM (int8 weights per row, rounded to "
                      "nearest; activations quantized at run time)."),
    click.option("--float-stem/--int8-stem", default=True, show_default=True,
                 help="With --runtime onnxruntime and --act-bits 8: keep the image stem float "
                      "(the Convs on the model input with <= 4 channels, a depthwise Conv on "
                      "<= 32 channels right after them) where the run measures an output error "
                      "at most 2% above the quantized stem's (usually faster too); --int8-stem "
                      "always quantizes it."),
    click.option("--float-highres/--int8-highres", default=True, show_default=True,
                 help="With --runtime onnxruntime and --act-bits 8: keep the Convs at stride "
                      "<= 4 float where the run measures an output error at most 0.8x and a "
                      "latency at most 1.05x those with them quantized, then likewise those at "
                      "stride 8; --int8-highres always quantizes them."),
    click.option("--float-heads/--int8-heads", default=True, show_default=True,
                 help="With --runtime onnxruntime and --act-bits 8: keep a Conv whose output "
                      "only feeds graph outputs (through Concat / data movement) float where "
                      "the run measures an output error more than 2% below and a latency at "
                      "most 1.05x those with it quantized; --int8-heads always quantizes it."),
    click.option("--quantize-tables/--float-tables", default=True, show_default=True,
                 help="With --runtime onnxruntime and --bits: store lookup tables read only by "
                      "Gathers (word embeddings) as GatherBlockQuantized codes, 8 bits (4 where "
                      "every layer has <= 4); --float-tables keeps them float."),
    click.option("--float-layer", "float_layers", multiple=True, metavar="PATTERN",
                 help="Write the layers whose node names match (glob) float, unquantized, "
                      "after solving them with the rest (pruned still, where the run prunes); "
                      "unlike --exclude, which leaves them out of every stage."),
]


def export_options(command: Any) -> Any:
    """The `compress` options of ExportOptions (where the quantized model runs)."""
    return _with(_EXPORT_OPTIONS, command)


_CHANNEL_OPTIONS = [
    click.option("--channels", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                 help="Remove this fraction of the layers' FLOPs as whole channels (structured "
                      "OBS; the graph shrinks), e.g. 0.3."),
    click.option("--channel-align", type=click.IntRange(min=0), default=0, show_default=True,
                 help="With --channels: keep a multiple of this many channels per layer; 0: "
                      "8 where the dense count is a multiple of 8 (onnxruntime's blocked CPU "
                      "Conv kernels), else 1."),
    click.option("--channel-allocate", type=click.Choice(["dp", "greedy", "uniform"]),
                 default="dp", show_default=True,
                 help="With --channels: how the cut is spread over the layers."),
    click.option("--channel-objective", type=click.Choice(["layer", "output"]),
                 default="output", show_default=True,
                 help="With --channels: what the spread minimises (output: each layer's loss "
                      "scaled by its measured effect on the model output)."),
    click.option("--channel-budget", type=click.Choice(["flops", "latency"]),
                 default="flops", show_default=True,
                 help="With --channels: F of the layers' FLOPs, or of the model's latency "
                      "(each layer's saving timed in onnxruntime, 1 thread)."),
]


def channel_options(command: Any) -> Any:
    """The `compress` options of channel pruning (--channels and how it is spread)."""
    return _with(_CHANNEL_OPTIONS, command)


class Once(logging.Filter):
    """Lets each message through once (the CLI's handlers): a run exports several variants
    of the model (the compressed one, its uncorrected and baseline twins, float
    candidates), and a note each export logs would print once per variant."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


_ACT_OPTIONS = [
    click.option("--act-bits", type=click.Choice(["8"]), default=None,
                 help="Static per-tensor symmetric int8 Q/DQ on the inputs of compressed layers "
                      "(and residual Add inputs), placed as TensorRT expects."),
    click.option("--act-calibration", type=click.Choice(["auto", "minmax", "percentile",
                                                          "mse"]),
                 default="auto", show_default=True,
                 help="Activation range estimate (mse: least expected squared quantization "
                      "error on each tensor's histogram, the grid of either target; auto: mse)."),
    click.option("--act-percentile", type=click.FloatRange(50, 100, min_open=True),
                 default=99.99, show_default=True),
    click.option("--smooth/--no-smooth", default=None,
                 help="With --act-bits 8: MatMul/Gemm inputs scaled per channel into their "
                      "weights (SmoothQuant, float-exact; one Mul before each activation "
                      "quantizer). Default: on with --bits 8 --runtime onnxruntime."),
    click.option("--smooth-alpha", type=click.FloatRange(0, 1, min_open=True), default=None,
                 help="SmoothQuant's migration strength for every input (1: all into the "
                      "weights); default: per input, of 0.5 / 0.75 / 1 or none, the lowest "
                      "estimated 8-bit output error."),
]


def act_options(command: Any) -> Any:
    """The activation quantization options of `compress`."""
    return _with(_ACT_OPTIONS, command)
