"""What to compress and how: frozen specs, one per concern, composed into `CompressConfig`.

    cfg = CompressConfig(prune=Pruning(sparsity=0.5), quant=Quantization(bits=4))
    cfg = CompressConfig.from_options(sparsity=0.5, bits=4)      # the flat names
    cfg = CompressConfig.from_dict(json.load(open("recipe.json")))  # a recipe file

Each spec validates itself on construction and is never changed afterwards; checks that
involve two specs are in `CompressConfig`. Errors name the Python field (`prune.sparsity`);
the CLI rewrites them into its flags (`--sparsity`). Each stage receives only the specs it
uses: selection `select`, solving `prune`/`quant`/`solver`, allocation `alloc`, correction
`correct`, the exporter `export` (which runtime the Q/DQ placement is for), and `run` for
the pipeline's own options.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from .checks import nm_value
from .errors import ConfigError
from .specs import (DEVICES, LAYER_OPS, METHODS, Allocation, Correction, ExportOptions,
                    Pruning, Quantization, RunOptions, Selection, SolverOptions)

__all__ = ["CompressConfig", "Selection", "Pruning", "Quantization", "SolverOptions",
           "Allocation", "Correction", "ExportOptions", "RunOptions", "LAYER_OPS", "METHODS",
           "DEVICES"]


SECTIONS: dict[str, type] = {"select": Selection, "prune": Pruning, "quant": Quantization,
                             "solver": SolverOptions, "alloc": Allocation,
                             "correct": Correction, "export": ExportOptions,
                             "run": RunOptions}
# flat option name -> (section, field); the flat names are those of `convert(**options)`
RENAMED = {"allocate": ("alloc", "mode"), "correct": ("correct", "mean"),
           "correct_scale": ("correct", "scale")}
FLAT: dict[str, tuple[str, str]] = {
    **{f.name: (s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)
       if (s, f.name) not in RENAMED.values()}, **RENAMED}


@dataclass(frozen=True, kw_only=True)
class CompressConfig:
    """The whole recipe: one frozen spec per concern (see the module docstring)."""

    select: Selection = field(default_factory=Selection)
    prune: Pruning = field(default_factory=Pruning)
    quant: Quantization = field(default_factory=Quantization)
    solver: SolverOptions = field(default_factory=SolverOptions)
    alloc: Allocation = field(default_factory=Allocation)
    correct: Correction = field(default_factory=Correction)
    export: ExportOptions = field(default_factory=ExportOptions)
    run: RunOptions = field(default_factory=RunOptions)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got "
                                  f"{type(getattr(self, name)).__name__}")
        for s, f, unset, resolve in _AUTO:  # in order: run.sequential reads alloc.mode
            spec = getattr(self, s)
            if getattr(spec, f) == unset:  # kept as _<s>_auto for replace(); the resolved runs
                object.__setattr__(self, f"_{s}_auto", spec)
                object.__setattr__(self, s, dataclasses.replace(spec, **{f: resolve(self)}))
        _check_combination(self)

    @classmethod
    def from_options(cls, base: CompressConfig | None = None, **options: Any
                     ) -> CompressConfig:
        """`base` (or the defaults) with flat options applied: sparsity=0.5, bits=4, ..."""
        unknown = sorted(set(options) - set(FLAT))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; the options are "
                              f"{', '.join(sorted(FLAT))}")
        changes: dict[str, dict[str, Any]] = {}
        for k, v in options.items():
            s, f = FLAT[k]
            changes.setdefault(s, {})[f] = _coerce(SECTIONS[s], f, v)
        specs = {s: getattr(base, f"_{s}_auto", getattr(base, s)) if base else c()
                 for s, c in SECTIONS.items()}  # an automatic field: re-resolved
        return cls(**{s: dataclasses.replace(spec, **changes.get(s, {}))
                      for s, spec in specs.items()})

    def replace(self, **options: Any) -> CompressConfig:
        """A copy with flat options changed (the frozen original stays as it is)."""
        return CompressConfig.from_options(self, **options)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{section: {field: value}}; JSON-ready (tuples become lists)."""
        return {s: {f.name: _plain(getattr(getattr(self, s), f.name))
                    for f in dataclasses.fields(SECTIONS[s])} for s in SECTIONS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompressConfig:
        """The inverse of to_dict; unknown sections or fields are refused."""
        if not isinstance(d, dict):
            raise ConfigError(f"a recipe is a mapping {{section: {{field: value}}}}, got "
                              f"{type(d).__name__}")
        bad = sorted(set(d) - set(SECTIONS))
        if bad:
            raise ConfigError(f"unknown recipe section(s) {bad}; the sections are "
                              f"{', '.join(SECTIONS)}")
        specs = {}
        for s, values in d.items():
            cls_s = SECTIONS[s]
            names = [f.name for f in dataclasses.fields(cls_s)]
            if not isinstance(values, dict):
                raise ConfigError(f"recipe section {s!r} must be a mapping of {names}")
            unknown = sorted(set(values) - set(names))
            if unknown:
                raise ConfigError(f"unknown field(s) {unknown} in recipe section {s!r}; its "
                                  f"fields are {', '.join(names)}")
            specs[s] = cls_s(**{k: _coerce(cls_s, k, v) for k, v in values.items()})
        return cls(**specs)


def _auto_mode(c: CompressConfig) -> str:
    """alloc.mode "auto": the DP over the weight budget when the run prunes to a global
    unstructured prune.sparsity with ExactOBS (solver.method obc), else uniform. The DP's
    level tables are ExactOBS traces, about the cost of the obc solve itself; with the fast
    path (gptq) they would cost more than the run, so it stays uniform unless asked."""
    p, a = c.prune, c.alloc
    dp = (p.sparsity is not None and p.nm is None and p.block is None and a.budget != "bops"
          and a.target is None and a.profile is None and p.sparsity < a.max_sparsity
          and c.solver.method == "obc")
    return "dp" if dp else "uniform"


def _auto_sequential(c: CompressConfig) -> bool:
    """run.sequential None: in groups when run.sequential_groups is given, or with OBQ /
    ExactOBS or GPTQ / SparseGPT when the run quantizes weights alone below 8 bits, prunes to
    N:M, or both (no activation grids, other pruning, allocation or channel pruning), where
    sequential lowered the output error of every real model measured (docs/defaults.md "Per-layer
    --sequential at W4", "N:M"); one-shot otherwise (at 50% Magika's DP was worse with it,
    at W4A8 PP-LCNet) and with the Ray engine (its parallel solves). costmem.without_auto
    falls back to one-shot where the full Hessians cannot fit."""
    from .solvers.choose import exact_pays

    q, p = c.quant, c.prune
    low = q.bits is not None and exact_pays(q.bits)
    nm = p.nm is not None and (q.bits is None or low)  # 2:4 + W4 measured too
    return c.run.sequential_groups is not None or (
        (low or nm) and q.act_bits is None and p.sparsity is None and p.block is None
        and not c.alloc.active and p.channels is None and c.solver.method in ("obc", "gptq")
        and c.run.engine == "local")  # Ray: one layer per group would solve one at a time


def _auto_reduce(c: CompressConfig) -> str:
    """quant.reduce_range "auto": on for 8-bit weights and activations with the onnxruntime
    target where this CPU's uint8 x int8 kernels can saturate (cpu.saturating_cpu: x86
    without VNNI), off otherwise. The converting CPU stands for the deployment one (the run
    verifies the written file on it); the report says so (reduce_note)."""
    from .cpu import saturating_cpu

    q = c.quant
    on = (q.bits == 8 and q.act_bits == 8 and c.export.runtime == "onnxruntime"
          and saturating_cpu())
    return "on" if on else "off"


def reduce_note(c: CompressConfig) -> list[str]:
    """The report's line when quant.reduce_range "auto" turned on."""
    auto = getattr(c, "_quant_auto", None) is not None and c.quant.reduce_range == "on"
    return [
        "reduce range on (automatic: this CPU, x86 without VNNI, can saturate onnxruntime's "
        "uint8 x int8 kernels with 8-bit weight codes): 8-bit weights in 7 bits' range, codes "
        "in [-63, 63]; for a deployment CPU with VNNI use --reduce-range off (docs/"
        "deployment.md)"] * auto


_AUTO = (("alloc", "mode", "auto", _auto_mode), ("run", "sequential", None, _auto_sequential),
         ("quant", "reduce_range", "auto", _auto_reduce))  # (section, field, unset, resolved)


def _check_combination(c: CompressConfig) -> None:
    """Rules that involve two specs, in the order a user meets them."""
    p, q, a, method = c.prune, c.quant, c.alloc, c.solver.method
    if q.reduce_range == "on" and q.bits != 8 and a.budget != "bops":
        raise ConfigError("quant.reduce_range keeps 8-bit weights in 7 bits' range: it needs "
                          "quant.bits 8 (for fewer bits set quant.bits)")
    if p.block is not None and p.sparsity is None and not a.active:
        raise ConfigError("prune.block prunes a fraction of the blocks: add prune.sparsity")
    if p.nm and a.active:
        raise ConfigError("N:M fixes every layer's sparsity (N/M): no non-uniform allocation; "
                          "use prune.sparsity with prune.block or unstructured, or "
                          "alloc.budget bops (N:M and bits as per-layer levels)")
    if a.budget == "bops":
        if not a.active:
            raise ConfigError("alloc.budget bops picks per-layer levels: add alloc.mode dp")
        if p.sparsity is not None or q.bits is not None or p.nm or p.block:
            raise ConfigError("with alloc.budget bops each layer's sparsity and bits come from "
                              "the mixed levels (alloc.level_bits, alloc.level_nm): drop "
                              "prune.sparsity, quant.bits, prune.nm and prune.block")
        if method != "obc":
            raise ConfigError("alloc.budget bops runs OBC's solvers: drop solver.method")
        if a.target is None and not a.profile:
            raise ConfigError("alloc.budget bops needs the reduction factor: add alloc.target "
                              "(e.g. alloc.target 32 = 1/32 of the dense FP32 bit-ops)")
    elif a.mode == "dp" and p.sparsity is None and a.target is None:
        raise ConfigError("non-uniform allocation needs the global target: add prune.sparsity"
                          " (or alloc.target with alloc.budget flops/params)")
    if p.sparsity is not None and a.target is not None:
        raise ConfigError("give the global target once: prune.sparsity or alloc.target")
    if p.block and method == "gptq":
        raise ConfigError("solver.method gptq prunes unstructured or N:M only; use the "
                          "default solver.method for prune.block")
    if p.nm and method == "gptq" and c.solver.act_order:
        raise ConfigError("solver.act_order orders the columns by diag(H), but gptq's N:M "
                          "(SparseGPT) takes each group of m columns together: drop it")
    if c.export.float_layers and q.bits is None and a.budget != "bops":
        raise ConfigError("export.float_layers keeps quantized layers float, and nothing is "
                          "quantized: add quant.bits, or use select.exclude to leave layers "
                          "out")
    if p.channel_allocate not in ("dp", "greedy", "uniform"):
        raise ConfigError(f"prune.channel_allocate must be dp, greedy or uniform, got "
                          f"{p.channel_allocate!r}")
    if p.channel_objective not in ("layer", "output"):
        raise ConfigError(f"prune.channel_objective must be layer or output, got "
                          f"{p.channel_objective!r}")
    if p.channel_budget not in ("flops", "latency"):
        raise ConfigError(f"prune.channel_budget must be flops or latency, got "
                          f"{p.channel_budget!r}")
    if p.channel_budget != "flops" and (p.channels is None or p.channel_allocate == "greedy"):
        raise ConfigError("prune.channel_budget latency needs prune.channels and "
                          "prune.channel_allocate dp or uniform")
    if p.channel_objective != "output" and p.channels is None:
        raise ConfigError("prune.channel_objective only applies to channel pruning: add "
                          "prune.channels")
    if p.channel_allocate != "dp" and p.channels is None:
        raise ConfigError("prune.channel_allocate only applies to channel pruning: add "
                          "prune.channels")
    if type(p.channel_align) is not int or p.channel_align < 0:  # bools are refused too
        raise ConfigError(f"prune.channel_align must be an integer >= 1 (or 0: auto), got "
                          f"{p.channel_align!r} (e.g. 8)")
    if p.channels is not None and c.correct.active and not (p.active or q.bits or a.active):
        raise ConfigError("correct.mean / correct.scale correct the layer solves: with "
                          "prune.channels alone there are none; add prune.sparsity or quant.bits")
    if p.channel_align != 0 and p.channels is None:
        raise ConfigError("prune.channel_align only applies to channel pruning: add "
                          "prune.channels")
    if not p.active and q.bits is None and not a.active and p.channels is None:
        raise ConfigError("nothing to do: give a target sparsity (prune.sparsity 0.5), an N:M "
                          "pattern (prune.nm 2:4), a FLOP cut by channels (prune.channels "
                          "0.3) and/or weight bits (quant.bits 8)")
    if q.group_size is not None and q.bits is None and a.budget != "bops":
        raise ConfigError("quant.group_size only applies to quantization: add quant.bits")
    if q.smooth and q.act_bits is None:
        raise ConfigError("quant.smooth scales layer inputs for activation quantization: add "
                          "quant.act_bits 8")
    e = c.export
    if q.act_bits and e.runtime == "onnxruntime" and q.bits is not None and not a.active and (
            q.bits < 5 or not q.symmetric):  # export/onnxruntime.int8_layer
        raise ConfigError(
            f"quant.act_bits with export.runtime onnxruntime quantizes the activations of the "
            f"layers onnxruntime's integer kernels take, symmetric 5-8-bit weights; "
            f"{q.bits}-bit{'' if q.symmetric else ' asymmetric'} weights run in float between "
            "float activations there, so it would change nothing: drop quant.act_bits "
            "(MatMulNBits quantizes 4-bit MatMuls' activations itself), or quantize to "
            "quant.bits 8 on a symmetric grid, or use export.runtime tensorrt")
    if e.runtime != "onnxruntime" and (e.nbits_block_size is not None
                                       or e.accuracy_level is not None):
        raise ConfigError("export.nbits_block_size and export.accuracy_level set MatMulNBits "
                          "(4-bit MatMul weights): add export.runtime onnxruntime")
    if e.nbits_block_size and q.group_size and q.group_size % e.nbits_block_size:
        raise ConfigError(f"export.nbits_block_size {e.nbits_block_size} must divide "
                          f"quant.group_size {q.group_size} (a MatMulNBits block has one "
                          "scale): use a smaller power of two, or leave it unset")
    if a.mode == "dp" and p.sparsity is not None and p.sparsity >= a.max_sparsity:
        raise ConfigError(f"the global sparsity {p.sparsity} must stay below the largest "
                          f"level {a.max_sparsity} (alloc.max_sparsity)")
    if method == "rtn" and q.bits is None:
        raise ConfigError("solver.method rtn is the quantization baseline: add quant.bits")
    if method == "magnitude" and not p.active and not a.active:
        raise ConfigError("solver.method magnitude is the pruning baseline: add "
                          "prune.sparsity")


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _coerce(cls: type, name: str, v: Any) -> Any:
    """Lists (JSON, click) become tuples in tuple-typed fields; a str in a tuple-of-str field
    becomes a 1-tuple, an "N:M" str in an (N, M) field the pair; ints in float fields stay."""
    hint = str(typing.get_type_hints(cls)[name])
    if "tuple[int, int]" in hint and isinstance(v, str):
        return nm_value(v)
    if "tuple" in hint and isinstance(v, list):
        return tuple(_coerce_inner(x) for x in v)
    if "tuple[str" in hint and isinstance(v, str):
        return (v,)
    return v


def _coerce_inner(x: Any) -> Any:
    return tuple(x) if isinstance(x, list) else x
