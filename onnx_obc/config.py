"""Frozen, validated configuration for a compression run.

`CompressConfig` holds every knob of `convert()` and the CLI. It is inert (no I/O) and
validated on construction; invalid values raise `ConfigError` with the fix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .quant import QuantSpec

LAYER_OPS = ("Conv", "Gemm", "MatMul")
METHODS = ("obc", "gptq", "magnitude", "rtn")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class CompressConfig:
    """What to compress and how.

    sparsity: fraction of weights set to zero in every compressed layer (0 < s < 1).
    nm: (n, m) N:M sparsity, n zeros in every m consecutive weights along the reduction axis
        TensorRT reads (2:4, 4:8); layers whose axis does not divide by m stay dense.
    block: prune blocks of this many consecutive input channels (with `sparsity`).
    bits: weight bits (2..8) for OBQ quantization; with sparsity, pruning comes first.
    group_size: columns per quantization scale (None: one scale per output channel).
    symmetric: symmetric grid, zero point 0 (TensorRT); False: asymmetric (uint codes).
    clip_search: OBC's clipping search for the grid (False: plain min-max).
    act_bits: 8 = static per-tensor symmetric int8 Q/DQ on the inputs of compressed layers
        (and residual Add inputs), ranges from the calibration capture.
    act_calibration: "minmax" or "percentile" (act_percentile of |x|).
    method: "obc" (ExactOBS / OBQ, the default), or the baselines "magnitude" (pruning) /
        "rtn" (quantization); either name runs every requested stage's baseline; "gptq"
        is the fast path (GPTQ quantization / SparseGPT pruning, jointly in one pass).
    act_order: with "gptq", process columns by descending Hessian diagonal.
    allocate: "uniform" (every layer at `sparsity`) or "dp" (per-layer levels chosen by an
        exact DP so the model meets the global budget with the least estimated error).
    budget: what the global target bounds with "dp": "sparsity"/"params" (weights), "flops",
        or "bops" (bit-operations; each layer picks one of OBC's mixed levels: fp32, w<b>,
        N:M, N:M + w<b> for b in level_bits and N:M = level_nm). target: reduction factor
        of the budget relative to the dense FP32 model (flops/params/bops; 4.0 = a quarter;
        for flops/params `sparsity` may give it instead, as 1 / (1 - sparsity)). score: level errors from the normalised layer loss ("loss") or the
        measured model output error ("output"). max_sparsity: the largest level.
    profile: a saved profile (JSON, layer -> sparsity) to apply instead of solving the DP;
        save_profile: where to write the chosen profile.
    level_bits / level_nm: the weight bits and the N:M pattern (None: none) of the mixed
        levels for "bops".
    sequential: compress layers in topological groups, each calibrated on the model with the
        earlier groups already compressed (sequential_groups groups; None: one per layer).
    correct: fold a per-output-channel mean correction (compressed vs dense outputs on the
        calibration data) into the biases. correct_scale: also a per-output-channel scale
        (least squares against the dense outputs), folded into the weights (the QDQ scales
        when quantized).
    damp: relative dampening, `H += damp * mean(diag H) * I`.
    device: "auto" (CuPy GPU if usable, else NumPy), "cpu" or "cuda".
    include / exclude: glob patterns on node names (fnmatch); a layer is compressed when it
        matches an include pattern (or there are none) and no exclude pattern.
    op_types: which layer kinds to compress.
    batch_size: calibration samples per onnxruntime run.
    calib_samples: use at most this many calibration samples (None: all).
    holdout: fraction of calibration samples kept out of the Hessians to measure fidelity.
    memory_budget_mb: bound for captured activations per pass (layers are captured in groups
        when one pass over all would exceed it) and for the solver's row batches on the CPU.
    solver_memory_mb: bound for the solver's row batches (None: memory_budget_mb on the CPU,
        60% of the free GPU memory on CuPy).
    seed: seed for synthetic calibration data.
    compare_baseline: also build the magnitude model and report its fidelity.
    external_data: write weights to a side file (None: only when the model needs it).
    """

    sparsity: float | None = None
    nm: tuple[int, int] | None = None
    block: int | None = None
    bits: int | None = None
    group_size: int | None = None
    symmetric: bool = True
    clip_search: bool = True
    act_bits: int | None = None
    act_calibration: str = "minmax"
    act_percentile: float = 99.99
    method: str = "obc"
    act_order: bool = False
    correct: bool = False
    correct_scale: bool = False
    allocate: str = "uniform"
    budget: str = "sparsity"
    target: float | None = None
    level_bits: tuple[int, ...] = (8, 4)
    level_nm: tuple[int, int] | None = (2, 4)
    score: str = "loss"
    max_sparsity: float = 0.95
    profile: str | None = None
    save_profile: str | None = None
    sequential: bool = False
    sequential_groups: int | None = None
    damp: float = 0.01
    device: str = "auto"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = LAYER_OPS
    batch_size: int = 32
    calib_samples: int | None = None
    holdout: float = 0.2
    memory_budget_mb: int = 2048
    solver_memory_mb: int | None = None
    seed: int = 0
    compare_baseline: bool = True
    external_data: bool | None = None

    def __post_init__(self) -> None:
        s = self.sparsity
        if self.nm is not None:
            n, m = self.nm
            if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
                raise ConfigError(f"N:M needs integers 0 < N < M, got {n}:{m} (e.g. --nm 2:4)")
            if s is not None:
                raise ConfigError("--nm sets the sparsity (N/M): drop --sparsity")
            if self.block is not None:
                raise ConfigError("use --nm or --block, not both")
            object.__setattr__(self, "nm", (n, m))
            s = None
        if self.block is not None:
            if not isinstance(self.block, int) or self.block < 2:
                raise ConfigError(f"block size must be an integer >= 2, got {self.block!r}")
            if s is None and not self.allocated:
                raise ConfigError("--block prunes a fraction of the blocks: add --sparsity")
        if self.nm and (self.allocate == "dp" or self.profile):
            raise ConfigError("N:M fixes every layer's sparsity (N/M): no non-uniform "
                              "allocation; use --sparsity with --block or unstructured, or "
                              "--budget bops (N:M and bits as per-layer levels)")
        self._check_allocation(s)
        if (self.nm or self.block) and self.method == "gptq":
            raise ConfigError("--method gptq prunes unstructured only; use the default "
                              "method for --nm / --block")
        if s is None and self.bits is None and self.nm is None and not self.allocated:
            raise ConfigError("nothing to do: give a target sparsity (--sparsity 0.5) and/or "
                              "weight bits (--bits 8)")
        if self.bits is not None and (not isinstance(self.bits, int) or not 2 <= self.bits <= 8):
            raise ConfigError(f"bits must be an integer from 2 to 8, got {self.bits!r}")
        if self.group_size is not None:
            if self.bits is None and self.budget != "bops":
                raise ConfigError("--group-size only applies to quantization: add --bits")
            if not isinstance(self.group_size, int) or self.group_size < 2:
                raise ConfigError(f"group size must be an integer >= 2, got {self.group_size!r}"
                                  " (e.g. --group-size 128)")
        if self.allocate not in ("uniform", "dp"):
            raise ConfigError(f"allocate must be 'uniform' or 'dp', got {self.allocate!r}")
        if self.score not in ("loss", "output"):
            raise ConfigError(f"score must be 'loss' or 'output', got {self.score!r}")
        if not 0.0 < self.max_sparsity < 1.0:
            raise ConfigError(f"max_sparsity must be in (0, 1), got {self.max_sparsity}")
        if self.allocate == "dp" and s is not None and float(s) >= self.max_sparsity:
            raise ConfigError(f"the global sparsity {s} must stay below the largest level "
                              f"{self.max_sparsity} (--max-sparsity)")
        if self.sequential_groups is not None and self.sequential_groups < 1:
            raise ConfigError(f"sequential_groups must be >= 1, got {self.sequential_groups}")
        if self.act_bits is not None and self.act_bits != 8:
            raise ConfigError(f"act_bits must be 8 (int8 activations), got {self.act_bits!r}")
        if self.act_calibration not in ("minmax", "percentile"):
            raise ConfigError("act_calibration must be 'minmax' or 'percentile', got "
                              f"{self.act_calibration!r}")
        if not 50.0 < self.act_percentile <= 100.0:
            raise ConfigError(f"act_percentile must be in (50, 100], got {self.act_percentile}")
        if self.method == "rtn" and self.bits is None:
            raise ConfigError("--method rtn is the quantization baseline: add --bits")
        if self.correct_scale and not self.correct:
            object.__setattr__(self, "correct", True)  # the scale comes with the mean
        if self.method == "magnitude" and s is None and self.nm is None and not self.allocated:
            raise ConfigError("--method magnitude is the pruning baseline: add --sparsity")
        if s is not None and (not isinstance(s, (int, float)) or not 0.0 < float(s) < 1.0):
            raise ConfigError(
                f"sparsity must be a fraction strictly between 0 and 1, got {s!r} "
                "(for 50% use 0.5)"
            )
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 <= self.damp <= 10.0:
            raise ConfigError(f"damp must be in [0, 10] (relative to mean diag H), got {self.damp}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        bad = [t for t in self.op_types if t not in LAYER_OPS]
        if bad or not self.op_types:
            raise ConfigError(
                f"op_types must be a non-empty subset of {', '.join(LAYER_OPS)}, got "
                f"{list(self.op_types)}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise ConfigError(f"calib_samples must be >= 1, got {self.calib_samples}")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"holdout must be a fraction in [0, 1), got {self.holdout}")
        if self.memory_budget_mb < 16:
            raise ConfigError(f"memory_budget_mb must be >= 16, got {self.memory_budget_mb}")
        if self.solver_memory_mb is not None and self.solver_memory_mb < 16:
            raise ConfigError(f"solver_memory_mb must be >= 16, got {self.solver_memory_mb}")
        for name in ("include", "exclude", "op_types"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))
        if s is not None:
            object.__setattr__(self, "sparsity", float(s))

    @property
    def allocated(self) -> bool:
        """Per-layer levels come from the DP or a profile."""
        return self.allocate == "dp" or self.profile is not None

    def _check_allocation(self, s: float | None) -> None:
        if self.budget not in ("sparsity", "params", "flops", "bops"):
            raise ConfigError(f"budget must be sparsity, params, flops or bops, got "
                              f"{self.budget!r}")
        bits = tuple(self.level_bits)
        if not bits or any(not isinstance(b, int) or not 2 <= b <= 8 for b in bits) \
                or len(set(bits)) != len(bits):
            raise ConfigError(f"level_bits must be distinct integers from 2 to 8, got {bits}")
        object.__setattr__(self, "level_bits", bits)
        if self.level_nm is not None:
            n, m = self.level_nm
            if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
                raise ConfigError(f"level N:M needs integers 0 < N < M, got {n}:{m}")
            object.__setattr__(self, "level_nm", (n, m))
        t = self.target
        if t is not None and (not isinstance(t, (int, float)) or not math.isfinite(t)
                              or t < 1.0):
            raise ConfigError(f"target is a reduction factor >= 1 relative to the dense FP32 "
                              f"model (4.0 = a quarter), got {t!r}")
        if t is not None and self.budget == "sparsity":
            raise ConfigError("--target is a reduction factor for --budget flops/params/bops;"
                              " with --budget sparsity give --sparsity")
        if self.budget == "bops":
            if self.allocate != "dp" and not self.profile:
                raise ConfigError("--budget bops picks per-layer levels: add --allocate dp")
            if s is not None or self.bits is not None or self.nm or self.block:
                raise ConfigError("with --budget bops each layer's sparsity and bits come from "
                                  "the mixed levels (--level-bits, --level-nm): drop --sparsity"
                                  ", --bits, --nm and --block")
            if self.method != "obc":
                raise ConfigError("--budget bops runs OBC's solvers: drop --method")
            if t is None and not self.profile:
                raise ConfigError("--budget bops needs the reduction factor: add --target "
                                  "(e.g. --target 32 = 1/32 of the dense FP32 bit-ops)")
        elif self.allocate == "dp" and s is None and t is None:
            raise ConfigError("non-uniform allocation needs the global target: add --sparsity"
                              " (or --target with --budget flops/params)")
        if s is not None and t is not None:
            raise ConfigError("give the global target once: --sparsity or --target")

    def quant_spec(self, bits: int | None = None) -> QuantSpec | None:
        """The weight grid for `bits` (default: the configured bits)."""
        bits = self.bits if bits is None else bits
        if bits is None:
            return None
        return QuantSpec(bits=bits, symmetric=self.symmetric, mse=self.clip_search,
                         group_size=self.group_size)

    def replace(self, **changes: Any) -> CompressConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
