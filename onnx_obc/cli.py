"""Command line: `onnx-obc IN OUT --sparsity 0.5 --calib data.npz` and `onnx-obc inspect IN`.

A thin layer over `convert()`: parsing, logging set-up and printing only.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from . import procenv  # noqa: F401  (first of the package: before numpy loads)
from .config import LAYER_OPS, Selection
from .errors import ConfigError, ObcError
from .flags import (
    Once,
    act_options,
    calib_options,
    channel_options,
    config_from_flags,
    engine_options,
    export_options,
    flags_in,
    view_options,
)


class _DefaultToCompress(click.Group):
    """`onnx-obc IN OUT ...` means `onnx-obc compress IN OUT ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h",
                                                                       "--version"):
            args = ["compress", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """Ctrl-C: "interrupted" and exit 130 (the shell's code for SIGINT), no traceback;
        a model being written is never left half-written (save_model cleans up)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            ctx.exit(130)


@click.group(cls=_DefaultToCompress, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnx-obc")
def main() -> None:
    """Compress an ONNX model with Optimal Brain Compression (ExactOBS), no retraining.

    \b
      onnx-obc in.onnx out.onnx --sparsity 0.5 --calib calib.npz
      onnx-obc in.onnx out.onnx --bits 4 --calib calib.npz
      onnx-obc inspect in.onnx

    `onnx-obc IN OUT ...` runs the compress command. All compression options are listed by
    `onnx-obc compress --help`; the main ones:

    \b
      --sparsity S         fraction of weights set to zero (0.5)
      --nm N:M             N:M sparsity (2:4)
      --bits B             OBQ weight quantization, 2-8 bits (QDQ output)
      --act-bits 8         int8 activation Q/DQ
      --runtime R          Q/DQ placement for tensorrt or onnxruntime (integer kernels)
      --calib PATH         calibration data (.npz/.npy, or a directory of them or images)
      --allocate dp        per-layer levels under a global budget
      --include/--exclude  which layers (glob on node names)
      --report PATH        the full report as JSON
    """


def _nm(value: str | None, hint: str = "--nm") -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        n, m = (int(x) for x in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not N:M, e.g. 2:4", param_hint=hint) from None
    return n, m


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, "
                                 "e.g. 8,4") from None


def _nm_or_none(ctx: click.Context, param: click.Parameter, value: str
                ) -> tuple[int, int] | None:
    if value.strip().lower() in ("", "none"):
        return None
    return _nm(value, "--level-nm (N:M or 'none')")


def _ops(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    ops = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [o for o in ops if o not in LAYER_OPS]
    if bad:
        raise click.BadParameter(f"{bad} not in {','.join(LAYER_OPS)}")
    return ops


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--sparsity", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction of weights to zero in every layer, e.g. 0.5.")
@click.option("--nm", callback=lambda c, p, v: _nm(v), metavar="N:M",
              help="N:M sparsity along the axis TensorRT reads (2:4, 4:8): N zeros in every "
                   "M consecutive input channels.")
@click.option("--block", type=click.IntRange(min=2),
              help="Prune blocks of this many consecutive input channels (with --sparsity).")
@channel_options
@click.option("--bits", type=click.IntRange(2, 8),
              help="Quantize weights with OBQ to this many bits (QDQ output); with "
                   "--sparsity, pruning comes first and the zeros are kept.")
@click.option("--group-size", type=click.IntRange(min=2),
              help="Columns per quantization scale (blocked QDQ, opset 21), e.g. 128.")
@click.option("--asymmetric", is_flag=True,
              help="Asymmetric weight grid (uint codes, zero points); default symmetric, "
                   "zero point 0 as TensorRT requires.")
@act_options
@export_options
@click.option("--minmax", is_flag=True,
              help="Plain min-max weight ranges instead of OBC's clipping search.")
@click.option("--refine/--no-refine", default=None,
              help="H-aware code descent after the quantization solve (lowers the layer "
                   "loss, never raises it); default: on with --method obc, off with gptq.")
@calib_options
@click.option("--method", type=click.Choice(["obc", "gptq", "magnitude", "rtn"]),
              default="obc", show_default=True,
              help="ExactOBS/OBQ; gptq = the fast path (GPTQ / SparseGPT, N:M too, one "
                   "pass); or the baselines (magnitude pruning / round to nearest).")
@click.option("--allocate", type=click.Choice(["auto", "uniform", "dp"]), default="auto",
              show_default=True,
              help="dp: per-layer sparsity chosen by an exact DP to meet the global "
                   "--sparsity with the least estimated error; uniform: every layer at "
                   "--sparsity; auto: dp for unstructured --sparsity with --method obc, else "
                   "uniform.")
@click.option("--budget", type=click.Choice(["sparsity", "params", "flops", "bops"]),
              default="sparsity", show_default=True,
              help="What the global target bounds with --allocate dp. bops: bit-operations, "
                   "each layer at one mixed level (fp32, w<b>, N:M, N:M+w<b>).")
@click.option("--target", type=click.FloatRange(min=1),
              help="Reduction factor of the --budget (flops/params/bops) relative to the "
                   "dense FP32 model, e.g. 32 = 1/32 of its bit-operations.")
@click.option("--level-bits", default="8,4", show_default=True, callback=_int_list,
              help="Weight bits of the mixed levels (--budget bops).")
@click.option("--level-nm", default="2:4", show_default=True, callback=_nm_or_none,
              help="N:M pattern of the mixed levels (--budget bops), or 'none'.")
@click.option("--score", type=click.Choice(["loss", "output"]), default="loss",
              show_default=True,
              help="Level errors for the DP: normalised layer loss, or measured model "
                   "output error with onnxruntime (slower).")
@click.option("--max-sparsity", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.95, show_default=True, help="Largest per-layer level for the DP.")
@click.option("--profile", type=click.Path(exists=True, dir_okay=False),
              help="Apply a saved per-layer profile (JSON) instead of solving the DP.")
@click.option("--save-profile", type=click.Path(dir_okay=False),
              help="Write the chosen per-layer profile as JSON.")
@click.option("--sequential/--one-shot", default=None,
              help="Layers in topological groups, each calibrated on the model with the earlier "
                   "ones compressed. Default: sequential for --bits < 8 alone, else one-shot.")
@click.option("--sequential-groups", type=click.IntRange(min=1),
              help="Groups for --sequential (default: one per layer); implies it.")
@click.option("--correct/--no-correct", default=None,
              help="Fold a per-output-channel mean correction (compressed vs dense outputs on "
                   "the calibration data) into the biases. Default: automatic with --bits 8 "
                   "--act-bits 8 --runtime onnxruntime (kept where it lowers the output "
                   "error by 2% or more), off otherwise.")
@click.option("--correct-scale", is_flag=True,
              help="Also a per-output-channel scale (least squares vs the dense outputs), "
                   "folded into the weights / QDQ scales. Implies --correct.")
@click.option("--w8-hessian", type=click.Choice(["auto", "diag", "full"]), default="auto",
              show_default=True, help="8-bit quantization alone, --method obc: diag: diag(H), "
              "RTN on its grid; full: H, GPTQ against RTN; auto: full on small layers.")
@click.option("--positions", type=click.Choice(["auto", "all"]), default="auto", show_default=True,
              help="auto: each layer's H from a subgrid of its output positions where the "
              "columns abound (>= 256 per input; 4 at 8 bits alone); all: every position.")
@click.option("--shrink/--no-shrink", default=True, show_default=True,
              help="Data-limited layers: H shrunk toward its diagonal as held-out halves choose.")
@click.option("--act-order", is_flag=True, help="With --method gptq: columns by descending diag H.")
@click.option("--damp", type=click.FloatRange(0, 10), default=0.01, show_default=True,
              help="Relative dampening: H += damp * mean(diag H) * I.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Solver device: CuPy on a GPU, or NumPy.")
@engine_options
@click.option("--include", multiple=True, metavar="PATTERN",
              help="Only compress nodes whose name matches (glob; repeatable).")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Never compress nodes whose name matches (glob; repeatable).")
@click.option("--op-types", default=",".join(LAYER_OPS), show_default=True, callback=_ops,
              help="Comma-separated layer kinds to compress.")
@click.option("--eval", "eval_data", type=click.Path(exists=True, dir_okay=False),
              help=".npz with the model inputs and `labels`, for accuracy.")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Fraction of calibration samples kept out to measure fidelity on "
              "(default: 0.2 from 1,280 samples on, else none: all calibrate).")
@click.option("--memory-budget", type=click.IntRange(min=16), default=2048, show_default=True,
              help="MB for Hessians (too wide: column blocks), activations, solver batches.")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), help="Seconds "
              "for the solves (predicted): ExactOBS or the fast path per layer to fit.")
@click.option("--solver-memory", type=click.IntRange(min=16), default=None,
              help="MB for the solver's row batches (default: --memory-budget on CPU, 60% "
                   "of free GPU memory with --device cuda).")
@click.option("--baseline/--no-baseline", default=None, help="Also build and measure the "
              "baseline model (magnitude / RTN; default: yes, but not at 8 bits alone).")
@click.option("--external-data/--no-external-data", default=None,
              help="Weights in a side file (default: only when the model needs it, >2 GB).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Write the report as JSON.")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False),
              help="A recipe (JSON, the `config` of a report): the options it sets apply "
                   "unless given on the command line.")
@click.option("--custom-op-library", type=click.Path(exists=True, dir_okay=False),
              help="Shared library of custom ops for onnxruntime (register_custom_ops_library).")
@click.option("--seed", type=int, default=0, show_default=True)
@view_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Log details.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compress(model: str, output: str, calib: str | None, eval_data: str | None,
             report_path: str | None, recipe: str | None, quiet: bool, verbose: bool,
             debug: bool, **opts: Any) -> None:
    """Compress MODEL (ExactOBS pruning and/or OBQ quantization) and write OUTPUT."""
    from .pipeline import convert

    _logging(verbose, debug)
    views = {k: opts.pop(k) for k in ("plot", "html")}  # outputs, not in the recipe
    try:
        cfg = config_from_flags(click.get_current_context(), recipe, opts)
        result = convert(model, output, calib=calib, eval_data=eval_data, config=cfg,
                         report_path=report_path, progress=not quiet, **views)
    except ConfigError as exc:  # contradictory or missing options: a usage error (exit 2)
        raise click.UsageError(flags_in(str(exc))) from None
    except ObcError as exc:
        if debug:
            raise
        raise click.ClickException(str(exc)) from None
    click.echo(result.report.table())
    click.echo(f"wrote {', '.join(str(p) for p in result.written)}"
               + (f" and {report_path}" if report_path else ""))


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--op-types", default=",".join(LAYER_OPS), callback=_ops)
@click.option("--include", multiple=True, metavar="PATTERN")
@click.option("--exclude", multiple=True, metavar="PATTERN")
@click.option("--channels", "sites", is_flag=True, help="Also list the channel sites.")
def inspect(model: str, op_types: tuple[str, ...], include: tuple[str, ...],
            exclude: tuple[str, ...], sites: bool) -> None:
    """List the layers onnx-obc would compress, and why the others are left alone."""
    from .branches import describe
    from .layers import find_layers
    from .modelio import load_model
    from .preflight import input_initializers, unknown_ops_note
    from .skips import outside
    from .names import SKIP_NAME_WIDTH, short_name, shortener

    select = Selection(op_types=op_types, include=include, exclude=exclude)
    try:
        proto = load_model(model)
        layers, skipped = find_layers(proto, select)
        skipped += outside(proto, proto)
    except ObcError as exc:
        raise click.ClickException(str(exc)) from None
    w = min(max([12] + [len(L.name) for L in layers]), SKIP_NAME_WIDTH)  # long: head, tail
    o = max([6] + [len(L.op) for L in layers])  # ConvTranspose: 13
    click.echo(f"{'layer':<{w}} {'op':<{o}} {'weight shape':<16} {'W [out,in]':>12} "
               f"{'groups':>6} storage")
    short = shortener([L.name for L in layers], w)
    for L in layers:
        G, r, d = L.matrix_shape
        click.echo(f"{short(L.name):<{w}} {L.op:<{o}} {str(list(L.shape)):<16} "
                   f"{f'{G * r}x{d}':>12} {G:>6} {L.storage}")
    click.echo(f"{len(layers)} compressible layers")
    if skipped:
        click.echo(f"\nleft uncompressed ({len(skipped)}):")
        for s in skipped:
            click.echo(f"  {short_name(s.node, SKIP_NAME_WIDTH)} ({s.op}): {s.reason}")
    if sites:  # (the same selection, on the folded model)
        from .channels.listing import site_lines
        click.echo("\n".join(site_lines(proto, select)))
    notes = input_initializers(proto) + describe(proto) + [unknown_ops_note(proto)]
    for n in filter(None, notes):
        click.echo(f"\nWARNING: {n}")


def _logging(verbose: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)  # each message once per run (flags.Once)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(Once())
    logging.basicConfig(level=level, handlers=[handler])  # none where a host has handlers
