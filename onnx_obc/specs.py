"""The specs a recipe is made of: one frozen dataclass per concern, validated on construction,
never changed; `config.CompressConfig` composes them and checks the rules that involve two of
them. Errors name the Python field (`prune.sparsity`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .calibspec import CalibReading
from .checks import choice, fraction, nm_ok, patterns
from .engine.options import check_engine
from .errors import ConfigError
from .exportspec import ACT_TYPES, RUNTIMES, ExportOptions  # noqa: F401  (re-exported)
from .quant import QuantSpec

LAYER_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")  # the layer kinds onnx-obc compresses
MB = 1 << 20  # the unit of the *_mb options
METHODS = ("obc", "gptq", "magnitude", "rtn")
DEVICES = ("auto", "cpu", "cuda")
ACT_CALIBRATIONS = ("auto", "minmax", "percentile", "mse")  # quant.act_calibration


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which layers: op_types, glob patterns on node names (a layer matching an include, or
    there are none, and no exclude); fold: affine ops into the layers first (fold/)."""

    op_types: tuple[str, ...] = LAYER_OPS
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    fold: bool = True

    def __post_init__(self) -> None:
        for name in ("op_types", "include", "exclude"):
            patterns(getattr(self, name), f"select.{name}")
        if not isinstance(self.fold, bool):
            raise ConfigError(f"select.fold must be true or false, got {self.fold!r}")
        bad = [t for t in self.op_types if t not in LAYER_OPS]
        if bad or not self.op_types:
            raise ConfigError(f"select.op_types must be a non-empty subset of "
                              f"{', '.join(LAYER_OPS)}, got {list(self.op_types)}")


@dataclass(frozen=True, kw_only=True)
class Pruning:
    """sparsity: fraction of zeros per layer (or the global target with allocation).
    nm: (n, m), n zeros in every m consecutive weights along the axis TensorRT reads.
    block: prune blocks of this many consecutive input channels (with sparsity).
    channels: fraction of the layers' FLOPs to remove as whole channels (structured OBS, the
    graph shrinks; first), keeping a multiple of channel_align channels per layer, the cut
    spread over the layers by channel_allocate (dp exact, greedy, uniform) minimising
    channel_objective (output, default: the normalised consumer losses each scaled by the
    site's measured output gain, channels/sensitivity.py; layer: unscaled); channel_budget
    flops counts the FLOPs, latency the model's latency measured in onnxruntime (1 thread;
    each site's saving timed on its subgraph, channels/timing.py; dp or uniform)."""

    sparsity: float | None = None
    nm: tuple[int, int] | None = None
    block: int | None = None
    channels: float | None = None
    channel_align: int = 0  # 0: auto (channels/allocate.py site_align)
    channel_allocate: str = "dp"
    channel_objective: str = "output"
    channel_budget: str = "flops"

    def __post_init__(self) -> None:
        fraction(self.sparsity, "prune.sparsity", " (for 50% use 0.5)")
        fraction(self.channels, "prune.channels", " (for a 30% FLOP cut use 0.3)")
        nm_ok(self.nm, "prune.nm")
        if self.nm is not None and self.sparsity is not None:
            raise ConfigError("prune.nm sets the sparsity (N/M): drop prune.sparsity")
        if self.block is not None:
            if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 2:
                raise ConfigError(f"prune.block must be an integer >= 2, got {self.block!r}")
            if self.nm is not None:
                raise ConfigError("use prune.nm or prune.block, not both")

    @property
    def active(self) -> bool:
        return self.sparsity is not None or self.nm is not None


@dataclass(frozen=True, kw_only=True)
class Quantization:
    """bits: weight bits (2..8, OBQ); group_size: columns per scale (None: per output
    channel); symmetric grid (zero point 0, TensorRT) or asymmetric; clip_search: OBC's
    clipping search (False: min-max). act_bits 8: static per-tensor int8 Q/DQ on the inputs
    of the quantized layers, ranges from the capture ("minmax", "percentile" or "mse":
    actrange.py; "auto": act_method). refine: the H-aware code descent after the solve
    (solvers/refine.py); None: the method's default (on for "obc" below 8 bits, off for
    "gptq", which then stays reference GPTQ). smooth, smooth_alpha: smooth.py (None: auto).
    reduce_range "on": 8-bit weights in 7 bits' range ([-63, 63], symmetric), which
    onnxruntime's uint8 x int8 kernels cannot saturate (cpu.py); "auto": config._auto_reduce."""

    bits: int | None = None
    group_size: int | None = None
    symmetric: bool = True
    clip_search: bool = True
    refine: bool | None = None
    act_bits: int | None = None
    act_calibration: str = "auto"
    act_percentile: float = 99.99
    smooth: bool | None = None
    smooth_alpha: float | None = None
    reduce_range: str = "auto"

    def __post_init__(self) -> None:
        if self.bits is not None and (isinstance(self.bits, bool) or not isinstance(
                self.bits, int) or not 2 <= self.bits <= 8):
            raise ConfigError(f"quant.bits must be an integer from 2 to 8, got {self.bits!r}")
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 2):
            raise ConfigError(f"quant.group_size must be an integer >= 2, got {g!r} (e.g. 128)")
        for f, v in (("refine", self.refine), ("smooth", self.smooth)):
            if v is not None and not isinstance(v, bool):
                raise ConfigError(f"quant.{f} must be true, false or null, got {v!r}")
        if self.act_bits is not None and self.act_bits != 8:
            raise ConfigError(f"quant.act_bits must be 8 (int8 activations), got {self.act_bits!r}")
        choice(self.act_calibration, ACT_CALIBRATIONS, "quant.act_calibration")
        choice(self.reduce_range, ("auto", "on", "off"), "quant.reduce_range")
        if not 50.0 < self.act_percentile <= 100.0:
            raise ConfigError(f"quant.act_percentile must be in (50, 100], got "
                              f"{self.act_percentile}")
        if self.smooth_alpha is not None and not 0.0 < self.smooth_alpha <= 1.0:
            raise ConfigError(f"quant.smooth_alpha must be in (0, 1], got {self.smooth_alpha}")

    def act_method(self, runtime: str) -> str:
        """act_calibration, "auto" being "mse" for both targets (lower W8A8 error than min-max
        on every real bench model: docs/defaults.md); `runtime`: for a target that differs."""
        return "mse" if self.act_calibration == "auto" else self.act_calibration

    def spec(self, bits: int | None = None) -> QuantSpec | None:
        """The solver's weight grid for `bits` (default: quant.bits; 8 with reduce_range on:
        in 7 bits' range); None without bits."""
        bits = self.bits if bits is None else bits
        return None if bits is None else QuantSpec(
            bits=bits, symmetric=self.symmetric, mse=self.clip_search,
            group_size=self.group_size, refine=self.refine,
            reduced=bits == 8 and self.reduce_range == "on")


@dataclass(frozen=True, kw_only=True)
class SolverOptions:
    """method: "obc" (ExactOBS / OBQ), "gptq" (GPTQ / SparseGPT in one pass) or the baselines
    "magnitude" / "rtn". act_order: gptq columns by descending diag H. damp: H += damp *
    mean(diag H) * I. w8_hessian: what "obc" keeps of H for 8-bit quantization alone
    (tier.diagonal_hessians): "diag", "full" or "auto" (full on the small layers).
    positions: "auto", each layer's H from a subgrid of its output positions where that
    still gives enough columns (tier.column_floor), or "all".
    shrink: data-limited layers' H shrunk toward its diagonal (solvers/shrink.py)."""

    method: str = "obc"
    act_order: bool = False
    damp: float = 0.01
    w8_hessian: str = "auto"
    positions: str = "auto"
    shrink: bool = True

    def __post_init__(self) -> None:
        choice(self.method, METHODS, "solver.method")
        if not 0.0 <= self.damp <= 10.0:
            raise ConfigError(f"solver.damp must be in [0, 10] (relative to mean diag H), got "
                              f"{self.damp}")
        choice(self.w8_hessian, ("auto", "diag", "full"), "solver.w8_hessian")
        choice(self.positions, ("auto", "all"), "solver.positions")
        if not isinstance(self.shrink, bool):
            raise ConfigError(f"solver.shrink must be true or false, got {self.shrink!r}")


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """mode "uniform" (every layer at the same level), "dp" (per-layer levels by an exact DP
    under the global budget: "sparsity"/"params", "flops" or "bops") or "auto" (default: dp
    for a global unstructured prune.sparsity with solver.method obc, else uniform; resolved
    by CompressConfig; docs/defaults.md). target: reduction factor of the budget vs the
    dense FP32 model. score: level errors from the layer loss ("loss") or the measured output
    error ("output"). profile: a saved per-layer profile to apply instead of the DP;
    save_profile: where to write the chosen one. level_bits / level_nm: the "bops" levels."""

    mode: str = "auto"
    budget: str = "sparsity"
    target: float | None = None
    score: str = "loss"
    max_sparsity: float = 0.95
    level_bits: tuple[int, ...] = (8, 4)
    level_nm: tuple[int, int] | None = (2, 4)
    profile: str | None = None
    save_profile: str | None = None

    def __post_init__(self) -> None:
        choice(self.mode, ("auto", "uniform", "dp"), "alloc.mode")
        choice(self.budget, ("sparsity", "params", "flops", "bops"), "alloc.budget")
        choice(self.score, ("loss", "output"), "alloc.score")
        if not 0.0 < self.max_sparsity < 1.0:
            raise ConfigError(f"alloc.max_sparsity must be in (0, 1), got {self.max_sparsity}")
        b = self.level_bits
        if (not isinstance(b, tuple) or not b or len(set(b)) != len(b)
                or any(isinstance(x, bool) or not isinstance(x, int) or not 2 <= x <= 8
                       for x in b)):
            raise ConfigError(f"alloc.level_bits must be a tuple of distinct integers from 2 "
                              f"to 8, got {b!r}")
        nm_ok(self.level_nm, "alloc.level_nm")
        t = self.target
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))
                              or not math.isfinite(t) or t < 1.0):
            raise ConfigError(f"alloc.target is a reduction factor >= 1 relative to the dense "
                              f"FP32 model (4.0 = a quarter), got {t!r}")
        if t is not None and self.budget == "sparsity":
            raise ConfigError("alloc.target is a reduction factor for alloc.budget "
                              "flops/params/bops; with alloc.budget sparsity give "
                              "prune.sparsity")

    @property
    def active(self) -> bool:
        """Per-layer levels come from the DP or a profile."""
        return self.mode == "dp" or self.profile is not None


@dataclass(frozen=True, kw_only=True)
class Correction:
    """mean: per-output-channel mean correction vs the dense outputs, into the biases (None:
    automatic, correct.correction_mode); scale: also a scale, into the weights / QDQ scales."""

    mean: bool | None = None
    scale: bool = False

    def __post_init__(self) -> None:
        if not (self.mean in (True, False, None) and self.scale in (True, False)):
            raise ConfigError(f"correct.mean: true, false or null (automatic); correct.scale: "
                              f"a bool; got {self.mean!r}, {self.scale!r}")

    @property
    def active(self) -> bool:  # asked for: always applied
        return self.mean is True or self.scale


@dataclass(frozen=True, kw_only=True)
class RunOptions(CalibReading):
    """How the pipeline runs (calibration reading: calibspec.py). sequential: topological
    groups (sequential_groups; None: one per layer), each calibrated on the model with the
    earlier ones compressed (None: config._auto_sequential). device: "auto" (CuPy GPU if
    usable), "cpu", "cuda". holdout: calib/plan.held_out_count. memory_budget_mb: Hessians,
    activations per capture, solves, kept tensors; solver_memory_mb: row batches."""

    sequential: bool | None = None
    sequential_groups: int | None = None
    device: str = "auto"
    batch_size: int = 32  # samples per onnxruntime run
    calib_samples: int | None = None  # at most this many
    correct_samples: int | None = None  # the correction measures at most this many (calib/plan)
    holdout: float | None = None
    memory_budget_mb: int = 2048
    solver_memory_mb: int | None = None
    seed: int = 0  # synthetic data, held-out split
    compare_baseline: bool | None = None  # the baseline too (None: pipeline.compares_baseline)
    external_data: bool | None = None  # weights in a side file (None: when > 2 GB)
    custom_op_library: str | None = None  # shared library of custom ops for onnxruntime
    sensitivity: bool = False  # also measure each layer alone, ranked (sensitivity.py)
    engine: str = "local"  # where layer solves run: "local" or "ray" (engine/)
    workers: int | None = None  # ray: tasks in flight (and CPUs of a Ray started here)
    ray_address: str | None = None  # ray: a cluster's address (None: RAY_ADDRESS, or local)
    time_budget_s: float | None = None  # the solves' predicted seconds (costplan.py)

    def __post_init__(self) -> None:
        if (t := self.time_budget_s) is not None and not (type(t) in (int, float) and 0 < t < 1e12):
            raise ConfigError(f"run.time_budget_s must be a number of seconds > 0, got {t!r}")
        self._check_calib()  # calib_preprocess, calib_sample_axes (calibspec.py)
        choice(self.device, DEVICES, "run.device")
        for name, least in (("sequential_groups", 1), ("batch_size", 1), ("calib_samples", 1),
                            ("correct_samples", 1), ("memory_budget_mb", 16), ("workers", 1),
                            ("solver_memory_mb", 16)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                raise ConfigError(f"run.{name} must be an integer >= {least}, got {v!r}")
        for name in ("compare_baseline", "sequential"):
            if getattr(self, name) not in (None, True, False):
                raise ConfigError(f"run.{name} must be true, false or null (auto), got "
                                  f"{getattr(self, name)!r}")
        if (h := self.holdout) is not None and not (type(h) in (int, float) and 0 <= h < 1):
            raise ConfigError(f"run.holdout must be a fraction in [0, 1) or null (auto), got {h!r}")
        check_engine(self.engine, self.workers, self.ray_address)
