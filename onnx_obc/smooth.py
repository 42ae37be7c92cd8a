"""The smoothing stage (calibration -> smooth -> capture): per-input-channel scales that move
a MatMul / Gemm input's outlier channels into its weights before 8-bit activation
quantization (SmoothQuant; Xiao et al., ICML 2023), float-exact.

A transformer's LayerNorm outputs and FFN activations have a few channels 10-20x larger than
the median (all-MiniLM-L6-v2: max / median of the per-channel maxima 9-17 at every
attention output LayerNorm and FFN input), and one per-tensor int8 grid must cover them,
so the other channels get a few codes each. With X [d, n] a layer's input and W [r, d] its
weights, W X = (W S)(S^-1 X) for S = diag(s): the layer reads S^-1 X, whose channels have
comparable ranges, and its weights W S are quantized per output row as before. The OBS
solvers then see the scaled problem (H' = S^-1 H S^-1; the OBS saliency w_j^2 / [H^-1]_jj
does not change under it, so a pruning run prunes the same weights).

    s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)      (alpha = 1: s_j = max|X_j|)

In an ONNX graph S^-1 cannot always be folded into the producer (in a post-LN BERT the
LayerNorm's output also feeds the residual Add), so it is one Mul by a constant vector in
front of the layers that read the tensor (Q, K and V share one); the Mul stays float (a
constant operand: export/ortplan.py), and the activation quantizer reads its output.
Measured: docs/deployment.md "Smoothing activation outliers" under Deployment."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .calib.tokens import positions
from .capture import activation_bytes, capture, capture_session, plan_groups
from .collect import batched
from .export.graph import constant, export_graph, fresh, model_opset, rewire
from .export.shrink import read_constant, write_constant
from .layers import Layer, select_layers
from .solvers.smoothquant import MARGIN, Choice, choose, scales
from .specs import MB

ROWS = 512  # rows of each input kept to choose its strength (solvers/smoothquant.choose)

OPS = ("MatMul", "Gemm")
HINT_SITES = 4  # a W8A8 tensorrt run with this many candidate inputs says --smooth exists
# (a transformer block has 4: Q/K/V's shared input, the attention output's, the FFN's two)


@dataclass(frozen=True)
class Site:
    tensor: str  # the layers' shared input
    weights: tuple[str, ...]  # the layers' weights
    alpha: float | None  # the strength taken; None: left as it is
    ratio: float  # max / median of the per-channel maxima, before
    after: float  # the same of max|X_j| / s_j (= ratio where not smoothed)
    errors: dict[str, float]  # estimated output error per strength ("off": none), if searched


@dataclass(frozen=True)
class Smoothed:
    alpha: float | None  # quant.smooth_alpha; None: chosen per input
    sites: tuple[Site, ...]
    hint: str = ""  # where the stage did not run but could (HINT_SITES)

    def summary(self) -> str:
        """One line for the report."""
        if self.hint:
            return self.hint
        done = [s for s in self.sites if s.alpha is not None]
        how = f"alpha {self.alpha:g}" if self.alpha is not None else "alpha per input " + (
            ", ".join(f"{a:g}: {sum(s.alpha == a for s in done)}"
                      for a in sorted({s.alpha for s in done})) or "-")
        line = (f"smoothed (SmoothQuant, {how}; --no-smooth keeps the inputs): {len(done)} of "
                f"{len(self.sites)} MatMul/Gemm input(s), {sum(len(s.weights) for s in done)} "
                f"layer(s), scaled per channel into the weights by one float Mul each")
        if done:
            worst = max(done, key=lambda s: s.ratio)
            line += (f"; largest channel max / median {worst.ratio:.1f} -> {worst.after:.1f} "
                     f"({worst.tensor})")
        left = len(self.sites) - len(done)
        return line + (f"; {left} left: no strength lowered their estimated 8-bit output error"
                       f" by {100 * (1 - MARGIN):.0f}%" if left else "")

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "sites": [
            {"tensor": s.tensor, "weights": list(s.weights), "alpha": s.alpha,
             "ratio": round(s.ratio, 3), "after": round(s.after, 3),
             "errors": {k: round(v, 6) for k, v in s.errors.items()}} for s in self.sites],
            "summary": self.summary(), **({"hint": self.hint} if self.hint else {})}


def sites(proto: onnx.ModelProto, layers: list[Layer]) -> dict[str, list[Layer]]:
    """input tensor -> the float32 MatMul / Gemm layers (no transA) that read it, each
    weight read by nothing else and its every use reading that one tensor."""
    readers: dict[str, int] = {}
    for n in proto.graph.node:
        for t in n.input:
            readers[t] = readers.get(t, 0) + 1
    out: dict[str, list[Layer]] = {}
    for L in layers:
        ins = {u.input for u in L.uses}
        if (L.op not in OPS or L.groups != 1 or len(ins) != 1 or L.dtype != "float32"
                or any(u.trans_a or u.op not in OPS for u in L.uses)
                or readers.get(L.weight, 0) != len(L.uses)):
            continue
        out.setdefault(ins.pop(), []).append(L)
    return out


def channel_stats(proto: onnx.ModelProto, names: list[str], data, runtime, memory_mb: int
                  ) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Per tensor of `names`: max |x| over every calibration sample and position, per
    channel (the last axis); and per half of the samples (even and odd ones) its rows, a
    uniform random sample of at most ROWS / 2 (fewer where every tensor's would take over a
    quarter of `memory_mb`), with that half's maxima: [(rows, maxima)], one entry where
    only one half has samples. In passes whose tensors fit `memory_mb`. A tensor laid out
    [batch, tokens, ...] counts only the positions of the run's token mask (calib/tokens.py)."""
    fit, mask = data.fit, getattr(data, "token_mask", None)
    first = next(fit.batches(data.run_batch))[1]
    sizes = activation_bytes(proto, names, first)
    amax: dict[str, list] = {}
    rows: dict[str, list[_Reservoir]] = {}
    for group in plan_groups([[n] for n in names], sizes, memory_mb * MB // 2):
        runs = batched(proto, group, runtime, fit, data.free_batch,
                       data.info.get("sample_axes")) if data.free_batch > 1 else None
        if runs is None:
            sess = capture_session(proto, group, runtime, prune=True)
            runs = capture(sess, group, fit.batches(data.run_batch))
        seen = 0
        for k, acts in runs:
            keep = np.asarray(acts[mask]) != 0 if mask in acts else None
            for n in group:
                y = np.asarray(acts[n])
                if n not in rows:
                    cap = memory_mb * MB // (32 * len(names) * y.shape[-1])
                    rows[n] = [_Reservoir(max(16, min(ROWS // 2, cap)), 2 * len(rows) + h)
                               for h in (0, 1)]
                    amax[n] = [None, None]
                for h, part in _halves(y, k, seen, keep):
                    m = np.abs(part).max(0)
                    amax[n][h] = m if amax[n][h] is None else np.maximum(amax[n][h], m)
                    rows[n][h].add(part)
            seen += k
    both = {n: [(r.rows, a) for r, a in zip(rows[n], amax[n]) if a is not None] for n in rows}
    return {n: np.max([a for _, a in v], axis=0) for n, v in both.items()}, both


def _halves(y: np.ndarray, samples: int, seen: int, keep: np.ndarray | None = None
            ) -> list[tuple[int, np.ndarray]]:
    """(half, rows [m, d]) of a run's tensor y: samples by parity where y's first axis holds
    them (or the run is one sample), else the whole run by the parity of its index. `keep`
    (the run's token mask, [batch, tokens]): only its token positions where y is laid out
    so (calib/tokens.positions); halves left without rows are left out."""
    d = y.shape[-1]
    if samples > 1 and y.ndim > 1 and y.shape[0] == samples:
        idx = (np.arange(samples) + seen) % 2
        parts = [(h, positions(y[idx == h], None if keep is None else keep[idx == h])
                  .reshape(-1, d)) for h in (0, 1) if (idx == h).any()]
    else:
        parts = [((seen if samples == 1 else seen // samples) % 2,
                  positions(y, keep).reshape(-1, d))]
    return [(h, p) for h, p in parts if len(p)]


class _Reservoir:
    """A uniform sample of at most `size` rows of everything added (each row keyed by a
    random number, the smallest keys kept; seeded: the same rows every run)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.rng = size, np.random.default_rng(seed)
        self.keys, self.rows = np.zeros(0), None

    def add(self, y: np.ndarray) -> None:
        keys = np.concatenate([self.keys, self.rng.random(len(y))])
        rows = y.astype(np.float32) if self.rows is None else np.concatenate([self.rows, y])
        if len(keys) > self.size:
            keep = np.argpartition(keys, self.size)[:self.size]
            keys, rows = keys[keep], rows[keep]
        self.keys, self.rows = keys, np.ascontiguousarray(rows, dtype=np.float32)


def smooth(proto: onnx.ModelProto, layers: list[Layer], data, runtime, cfg
           ) -> tuple[onnx.ModelProto, Smoothed | None]:
    """The smoothed copy of `proto` and what changed; `proto` and None where no layer
    qualifies (sites())."""
    found = sites(proto, layers)
    if not found:
        return proto, None
    alpha = cfg.quant.smooth_alpha
    qmax = replace(cfg.quant.spec(8), symmetric=True).qmax  # the weights' 8-bit grid
    amax, sample = channel_stats(proto, list(found), data, runtime, cfg.run.memory_budget_mb)
    graph = gs.import_onnx(proto)
    tensors = graph.tensors()
    fresh(tensors, *(f"{t}/smoothed" for t in found), *(f"{t}/smooth_scale" for t in found))
    done = []
    for t, group in found.items():
        a = amax[t]
        x = tensors[t]
        ws = [tensors[L.weight] for L in group]
        mats = [L.to_matrix(read_constant(w).astype(np.float32)) for L, w in zip(group, ws)]
        wmax = np.max([np.abs(m).max(axis=(0, 1)) for m in mats], axis=0)
        if a.shape != wmax.shape or a.max() <= 0:
            continue
        pick = choose(sample[t], [m[0] for m in mats], qmax=qmax) if alpha is None else (
            Choice(alpha))
        med = float(np.median(a))
        ratio = float(a.max() / med) if med > 0 else float("inf")
        if pick.alpha is None:
            done.append(Site(t, tuple(L.weight for L in group), None, ratio, ratio, pick.errors))
            continue
        s = scales(a, wmax, pick.alpha)
        y = gs.Variable(f"{t}/smoothed", dtype=np.float32)
        inv = constant(f"{t}/smooth_scale", (1.0 / s).astype(np.float32))
        graph.nodes.append(gs.Node("Mul", f"{t}/Smooth", inputs=[x, inv], outputs=[y]))
        rewire(x, y, [n for n in x.outputs if n.op in OPS and n.inputs[1] in ws])
        for L, w, m in zip(group, ws, mats):
            write_constant(w, L.from_matrix((m * s[None, None, :]).astype(np.float32)))
        after = a / s
        done.append(Site(t, tuple(L.weight for L in group), pick.alpha, ratio,
                         float(after.max() / max(float(np.median(after)), 1e-30)), pick.errors))
    if not done:
        return proto, None
    out = proto if all(s.alpha is None for s in done) else export_graph(
        graph, proto, model_opset(proto))
    return out, Smoothed(alpha, tuple(done))


def active(cfg) -> bool:
    """Whether the stage runs: quant.smooth, where None (auto) is on for 8-bit weights and
    activations on the onnxruntime target (measured there: docs/deployment.md "Smoothing activation
    outliers"); the tensorrt target takes it with --smooth (its latency untimed here)."""
    q = cfg.quant
    if q.smooth is not None:
        return q.smooth
    return q.act_bits == 8 and q.bits == 8 and cfg.export.runtime == "onnxruntime"


def stage(proto: onnx.ModelProto, layers: list[Layer], data, runtime, cfg,
          clock: dict[str, float]) -> tuple[onnx.ModelProto, list[Layer], Smoothed | None]:
    """The pipeline's stage (timed as "smooth" where it runs): the model, its layers
    selected again where it changed, and what changed."""
    if not active(cfg):
        q = cfg.quant
        n = len(sites(proto, layers)) if q.act_bits == 8 and q.smooth is None and (
            cfg.export.runtime == "tensorrt") else 0
        return proto, layers, Smoothed(None, (), hint=(
            f"not smoothed: {n} MatMul/Gemm inputs could take SmoothQuant scales (--smooth: a "
            "BERT's W8A8 output error 0.17 -> 0.066 in onnxruntime, TensorRT's latency not "
            "measured; on by default with --runtime onnxruntime; docs/deployment.md \"Smoothing"
            " activation outliers\")")) if n >= HINT_SITES else None
    t = time.perf_counter()
    proto, done = smooth(proto, layers, data, runtime, cfg)
    changed = done is not None and any(s.alpha is not None for s in done.sites)
    layers = select_layers(proto, cfg.select)[0] if changed else layers
    clock["smooth"] = time.perf_counter() - t
    return proto, layers, done
