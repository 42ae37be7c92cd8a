"""The run report: per-layer results, skipped layers, model-level fidelity; table and JSON."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .costplan import plan_line
from .layers import Skipped
from .skips import TWO_ACTIVATIONS
from .atomic import write_atomic
from .names import NAME_WIDTH, SKIP_NAME_WIDTH, short_name, shortener  # noqa: F401 - the
# widths and short_name: for the views, the CLI and the tests, as before
from .fidelity import Fidelity


@dataclass(frozen=True)
class LayerResult:
    name: str  # consumer node(s)
    op: str
    weight: str
    shape: tuple[int, ...]  # ONNX weight shape
    rows: int  # W [rows, cols]: output channels x inputs per output (per group for Conv)
    cols: int
    groups: int
    method: str
    sparsity: float  # fraction of zeros reached
    target: float
    loss: float  # E = tr(dW H dW^T) = (1/N)||dW X||^2 on the calibration data
    magnitude_loss: float  # the baseline (magnitude pruning / RTN) at the same settings
    dead_inputs: int
    damp: float
    damp_failed: tuple[float, ...]  # dampening values whose Cholesky failed first
    seconds: float
    work: float = 1.0  # greedy steps computed / rows*cols (steps that could not be selected
    rerun_rows: int = 0  # are skipped; rows re-run after a too-low threshold estimate)
    bits: int | None = None  # weight bits (None: not quantized)
    group_size: int | None = None  # columns per scale (None: per output channel)
    prune_loss: float | None = None  # loss after pruning, before quantization (compound)
    method_used: str = ""  # what produced the weights (obq, gptq, gptq+act-order, rtn, ...)
    rank: int | None = None  # effective rank of H (eigenvalues > 1e-6 max, undampened), min
    samples: int | None = None  # over groups; calibration samples N behind H
    data_limited: bool | None = False  # rank < live inputs; None: not computed (8 bits alone)
    columns: int | None = None  # columns behind H (samples x positions), a bound on its rank
    predicted_seconds: float | None = None  # the plan's prediction (costplan.py) of `seconds`
    shrink: float = 0.0  # H shrunk toward its diagonal by this level (solvers/shrink.py)

    @property
    def ratio(self) -> float:
        if self.magnitude_loss > 0:
            return self.loss / self.magnitude_loss
        return 1.0 if self.loss == 0 else math.inf


@dataclass(frozen=True)
class Report:
    """A run's report, assembled once from what the stages returned (pipeline._report)."""

    model: str
    output: str | None
    config: dict[str, Any]
    device: str
    calibration: dict[str, Any]
    layers: list[LayerResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    fidelity: dict[str, dict[str, Fidelity]] = field(default_factory=dict)  # set -> model -> F
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    correction: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)  # non-uniform levels per layer
    fusion: dict[str, Any] = field(default_factory=dict)  # export.fusion.Fusion.to_dict()
    channels: dict[str, Any] = field(default_factory=dict)  # channels.ChannelResult.to_dict()
    sensitivity: dict[str, Any] = field(default_factory=dict)  # sensitivity.summarize()
    plan: dict[str, Any] = field(default_factory=dict)  # costplan.Plan.to_dict()
    folded: dict[str, Any] = field(default_factory=dict)  # fold.Folded.to_dict()
    smoothed: dict[str, Any] = field(default_factory=dict)  # smooth.Smoothed.to_dict()
    notes: list[str] = field(default_factory=list)  # decisions a stage explains (floatcheck)
    pinned: dict[str, Any] = field(default_factory=dict)  # the options repeating them (pinned.py)
    machine: list[str] = field(default_factory=list)  # settings "auto" took from this CPU

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [{**asdict(r), "ratio": r.ratio} for r in self.layers]
        d["fidelity"] = {s: {m: f.to_dict() for m, f in v.items()}
                         for s, v in self.fidelity.items()}
        return d

    def write_json(self, path: str | os.PathLike) -> None:
        """Atomically: a temp file beside `path`, renamed; on failure removed, `path` kept."""
        text = json.dumps(self.to_dict(), indent=2, default=_jsonable)
        write_atomic(path, text.encode(), "the report", "--report")

    def decisions(self) -> list[str]:
        """The run's decision lines: the settings taken from this machine, the token mask, the
        fold, the smoothing, the correction, the notes."""
        return [x for x in (*self.machine, self.calibration.get("token_mask", {}).get("summary"),
                            self.folded.get("summary"), self.smoothed.get("summary"),
                            self.correction.get("decision"),
                            *self.notes) if x]

    def table(self) -> str:
        return "\n".join(_channel_lines(self) + _layer_lines(self) + _profile_lines(self)
                         + _skip_lines(self) + _fidelity_lines(self) + _fusion_lines(self)
                         + _sensitivity_lines(self) + _footer(self))


_jsonable = str  # what json cannot write (paths, numpy scalars), as text


def _layer_lines(r: Report) -> list[str]:
    if not r.layers:
        return [] if r.channels else ["no layer was compressed"]
    w = max(12, min(NAME_WIDTH, max(len(x.name) for x in r.layers)))
    o = max(6, *(len(x.op) for x in r.layers))  # ConvTranspose: 13
    base = "baseline" if any(x.bits for x in r.layers) else "magnitude"
    head = (f"{'layer':<{w}} {'op':<{o}} {'W [out,in]':>12} {'sparsity':>8} {'bits':>6} "
            f"{'loss':>10} {base:>10} {'ratio':>7} {'dead':>4} {'rank':>10} {'damp':>7} "
            f"{'work':>5} {'sec':>6}")
    lines = [head, "-" * len(head)]
    short = shortener([x.name for x in r.layers], w)
    for x in r.layers:
        name = short(x.name)
        rows, cols = x.rows, x.cols
        damp = f"{x.damp:.0e}" + ("!" if x.damp_failed else "")
        work = f"{x.work:.0%}" if x.target else "-"
        bits = "-" if not x.bits else f"{x.bits}" + (f"/g{x.group_size}" if x.group_size else "")
        rank = "n/c" if x.data_limited is None else (
            "-" if x.rank is None and not x.data_limited else
            f"{'<' if x.rank is None else ''}{x.columns if x.rank is None else x.rank}/{cols}"
            + ("!" if x.data_limited else ""))
        lines.append(
            f"{name:<{w}} {x.op:<{o}} {f'{rows}x{cols}':>12} {x.sparsity:>8.2%} {bits:>6} "
            f"{x.loss:>10.3g} "
            f"{x.magnitude_loss:>10.3g} {x.ratio:>7.3f} {x.dead_inputs:>4} {rank:>10} {damp:>7} "
            f"{work:>5} {x.seconds:>6.2f}"
        )
    ratios = sorted(x.ratio for x in r.layers)
    med = ratios[len(ratios) // 2] if len(ratios) % 2 else 0.5 * (
        ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2])
    total = sum(math.prod(x.shape) for x in r.layers)
    zeros = sum(x.sparsity * math.prod(x.shape) for x in r.layers)
    methods = ", ".join(sorted({x.method for x in r.layers}))
    lines.append(f"{len(r.layers)} layers ({methods}), {total:,} weights, {zeros / total:.2%} "
                 f"zeros; loss/{base} median {med:.3f}, worst {ratios[-1]:.3f}")
    if (nc := sum(x.data_limited is None for x in r.layers)):
        lines.append(f"rank of H not computed (n/c) for {nc} layers quantized at 8 bits alone: "
                     "their data-limited flag is unknown")
    kept = [x.method_used for x in r.layers if x.bits and x.method == "obc" and x.method_used]
    if kept:  # obc keeps, per layer, the least loss of OBQ, GPTQ and RTN (method_used)
        used = {m: kept.count(m) for m in sorted(set(kept))}
        lines.append("kept per layer by least loss: " + ", ".join(
            f"{m} {n}" for m, n in used.items()) + " (method_used in the JSON report)" + (
            "; rtn/diag-H: the 8-bit tier's layers, diag(H) only (--w8-hessian), their "
            "losses under it" if "rtn/diag-H" in used else ""))
    compound = [x for x in r.layers if x.bits and x.prune_loss is not None]
    if compound:
        p, q = sum(x.prune_loss for x in compound), sum(x.loss for x in compound)
        lines.append(f"loss after pruning {p:.4g}, after quantization {q:.4g}"
                     " (per layer: prune_loss and loss in the JSON report)")
    if any(x.damp_failed for x in r.layers):
        lines.append("! dampening was escalated after a Cholesky failure (see damp_failed in JSON)")
    return lines


def _profile_lines(r: Report) -> list[str]:
    if not (p := r.profile):
        return []
    lines = ["", "non-uniform profile: " + ", ".join(
        f"{short_name(k, NAME_WIDTH)} {v}" if isinstance(v, str)
        else f"{short_name(k, NAME_WIDTH)} {v:.3f}" for k, v in p["choice"].items())]
    if "cost" in p:
        lines.append(f"  {p['budget']} kept {p['cost']:.4g} of {p['dense_cost']:.4g} "
                     f"({p['cost'] / p['dense_cost']:.1%}, {p['dense_cost'] / p['cost']:.3g}x "
                     f"less); estimated error {p['error']:.4g} (score: {p['score']})")
    return lines


def _skip_lines(r: Report) -> list[str]:
    seen: dict[tuple, list[str]] = {}  # one line per weight and reason (a weight's nodes);
    for s in r.skipped:  # one for all products of two activations (two per attention)
        key = None if s.reason == TWO_ACTIVATIONS else s.weight or s.node
        seen.setdefault((key, s.op, s.reason), []).append(s.node)
    many = lambda k, n: "" if len(n) == 1 else f", {len(n)} nodes" + (  # noqa: E731
        "" if k is None else ", one weight")
    return ["", f"left uncompressed ({len(r.skipped)}):"] * bool(r.skipped) + [
        f"  {short_name(', '.join(n), SKIP_NAME_WIDTH)} ({op}{many(k, n)}): {why}"
        for (k, op, why), n in seen.items()]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _fusion_lines(r: Report) -> list[str]:
    """The fusion check: the quantized layers on integer kernels, one line per other reason."""
    if not (f := r.fusion) or not f.get("layers"):
        return []
    if f.get("error"):
        return ["", f"onnxruntime fusion check not run: {f['error']}"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(f.get("kernels", {}).items()))
    lines = ["", f"onnxruntime CPU (ORT_ENABLE_ALL): {f['integer']} of {f['layers']} quantized "
                 f"layers run on integer kernels" + (f" ({kinds})" if kinds else "")]
    why: dict[str, list[str]] = {}  # "op node: reason", the nodes of one reason on a line
    for u in f.get("unfused", []):
        why.setdefault(u["why"].partition(": ")[2], []).append(u["why"].partition(": ")[0])
    trt = r.config.get("export", {}).get("runtime") == "tensorrt"  # reasons: in the JSON
    lines += [f"  {', '.join(n[:3])}{f' and {len(n) - 3} more' * (len(n) > 3)}: {w}"
              for w, n in why.items() if not trt]
    lines += [f"  {t}" for t in map(f.get, ("float_line", "nbits_line", "tables_line",
                                            "latency_line", "saturation_line")) if t] + [
        "  (this is the TensorRT placement, each layer's reason in the JSON report's fusion "
        "section; for onnxruntime use --runtime onnxruntime, which places Q/DQ so that its "
        "CPU optimizer fuses them)"] * (trt and f["integer"] < f["layers"])
    return lines


def _fidelity_lines(r: Report) -> list[str]:
    lines: list[str] = []
    for set_name, models in r.fidelity.items():
        w, n = max([10] + [len(m) for m in models]), next(iter(models.values())).samples
        lines += ["", f"model fidelity on {set_name} ({n} samples):",
                  f"  {'model':<{w}} {'rel. output error':>18} {'top-1 agree':>12} "
                  f"{'accuracy':>9}"]
        lines += [f"  {m:<{w}} {f.error:>18.4f} {_pct(f.top1_agreement):>12} "
                  f"{_pct(f.accuracy):>9}" for m, f in models.items()] + _first_output(models)
    return lines


def _first_output(models: dict) -> list[str]:
    """Which outputs the table's error (the largest over them) reads: the first's where it
    is another's; a decoder's KV-cache outputs aside (Fidelity.counted)."""
    fs = {m: f for m, f in models.items() if f.rel_error}
    if not (f0 := next(iter(fs.values()), None)):
        return []
    n, first, aside = len(f0.counted), next(iter(f0.counted)), len(f0.rel_error) - len(f0.counted)
    mixed = any(max(f.counted, key=f.counted.get) != first for f in fs.values())
    say = ([f"the largest of {n} outputs' errors; the first, {first!r}: " + ", ".join(
        f"{m} {f.rel_error[first]:.4f}" for m, f in fs.items())] if mixed else
        [f"the error of {first!r}" if n == 1 else f"the largest of {n} outputs' errors"] *
        bool(aside)) + [f"the {aside} KV-cache output{'s' * (aside > 1)} aside"] * bool(aside)
    return ["  (" + "; ".join(say) + "; each output's in the JSON report)"] if say else []


def _sensitivity_lines(r: Report, top: int = 10) -> list[str]:
    """Layers ranked by the error with only that layer compressed; the first to exclude."""
    if not (s := r.sensitivity):
        return []
    aside, seq = s.get("outputs_aside") or [], s.get("solves") == "one-shot"
    lines = ["", f"sensitivity on {s['set']} ({s['samples']} samples), output error with only "
                 f"that layer compressed (top {min(top, len(s['layers']))} of {len(s['layers'])}"
                 + f"; the {len(aside)} KV-cache outputs aside" * bool(aside) + "; as solved "
                 "one-shot, on the dense model's inputs" * seq + "):"]
    short = shortener([x["layer"] for x in s["layers"]], NAME_WIDTH)
    lines += [f"  {short(x['layer']):<{NAME_WIDTH}} {x['error']:>9.4f} "
              f"{x['share']:>6.1%}" for x in s["layers"][:top]]
    return lines + [f"  exclude first: {s['flags']}" + " (check it with a run: under --sequential "
                    "the layers after them are solved again)" * seq] * bool(s["exclude"])


def _footer(r: Report) -> list[str]:
    t = ", ".join(f"{k} {v:.1f}s" for k, v in r.seconds.items())
    lines = ["", f"device: {r.device}; time: {t}" + (
        f"; peak memory {r.peak_memory_mb:.0f} MB" if r.peak_memory_mb else "")]
    if r.plan:
        lines.append(plan_line(r.plan, [(x.predicted_seconds, x.seconds) for x in r.layers],
                               r.seconds.get("allocate")))
    lines += r.decisions() + ([r.pinned["line"]] if r.pinned.get("line") else [])
    lines += [f"WARNING: {w}" for w in r.warnings]
    return lines


def _channel_lines(r: Report) -> list[str]:
    """Channels (or heads, "h") removed per producer -> consumer, OBS vs L2-norm, refusals."""
    c = r.channels
    if not c:
        return []
    head = (f"{'producer -> consumer':<34} {'removed':>9} {'loss/energy':>12} "
            f"{'l2-norm':>10} {'ratio':>7}")
    lines = [head, "-" * len(head)]
    for row in c["rows"]:
        e = row["energy"] or 1.0
        pair = short_name(f"{row['producer']} -> {row['consumer']}", 34)
        of = f"{row['channels']}{'h' if row.get('unit', 1) > 1 else ''}"  # h: whole heads
        lines.append(f"{pair:<34} {row['removed']:>4}/{of:<4} "
                     f"{row['loss'] / e:>12.4g} {row['norm_loss'] / e:>10.4g} "
                     f"{row['ratio']:>7.3f}")
    dense, pruned = c["macs_dense"], c["macs_pruned"]
    lines.append(f"layer + attention FLOPs {dense:,.0f} -> {pruned:,.0f} per sample "
                 f"({1 - pruned / dense if dense else 0:.1%} fewer)")
    if t := c.get("latency"):  # --channel-budget latency: predicted vs measured
        d, cut, p = t["measured_dense_ms"], t["measured_cut_ms"], t["predicted_saved_ms"]
        lines.append(f"latency {t['model_ms']:.3g} ms: predicted {p:.3g} ms saved "
                     f"({p / max(t['model_ms'], 1e-30):.1%}), measured {d:.3g} -> {cut:.3g} ms "
                     f"({1 - cut / d if d else 0:.1%})")
    lines += [f"  channels kept: {x['producer']}: {x['reason']}" for x in c["refused"]]
    return lines + [""]
