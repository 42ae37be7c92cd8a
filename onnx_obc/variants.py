"""The models a run builds beside the compressed one to compare with (the uncorrected
model, the magnitude / RTN baseline) and the baseline's name in the report."""

from __future__ import annotations

from . import costplan
from .config import CompressConfig
from .correct import CorrectionResult, correction_mode


def layerwise(cfg: CompressConfig) -> bool:
    """Whether the layer-wise stages have work (not with channel pruning alone)."""
    return bool(cfg.prune.active or cfg.quant.bits or cfg.alloc.active)


def variants(cfg: CompressConfig, fixes: CorrectionResult | None) -> list[str]:
    """The models to build: the compressed one, and (to compare) the uncorrected one and
    the baseline, deployed the same way."""
    which = ["compressed"]
    if fixes is not None and (compares_baseline(cfg) or correction_mode(cfg) == "auto"):
        which += ["uncorrected"]
    if compares_baseline(cfg) and layerwise(cfg):
        which += ["baseline"] if cfg.solver.method not in ("magnitude", "rtn") else []
    return which


def compares_baseline(cfg: CompressConfig) -> bool:
    """run.compare_baseline, by default on except for quantization alone at 8 bits
    (costplan.exact_applies; with channel pruning the L2-norm channel model stays), where
    the RTN model's build and verification cost more than the solve (docs/conversion-time.md)."""
    c = cfg.run.compare_baseline
    return (costplan.exact_applies(cfg) or cfg.prune.channels is not None) if c is None else c


def baseline_name(cfg: CompressConfig) -> str:
    """The baseline model's name in the report: magnitude, rtn or magnitude+rtn."""
    if cfg.alloc.budget == "bops":  # the mixed levels, each with its own baseline
        pruned, quant = cfg.alloc.level_nm is not None, True
    else:
        pruned = cfg.prune.sparsity or cfg.prune.nm or cfg.alloc.target or cfg.alloc.profile
        quant = cfg.quant.bits
    return "+".join(n for n, on in (("magnitude", pruned), ("rtn", quant)) if on)
