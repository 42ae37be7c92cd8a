"""Per-layer sensitivity: the model's output error with only one layer compressed (the
others dense), measured on the held-out samples, layers ranked worst first, and the layers a
user would exclude first as ready-to-paste `--exclude` flags.

    ranked = measure_sensitivity(proto, layers, solutions, data.held, batch, runtime,
                                 act_values=done.act_values, target="tensorrt")
    summary = summarize(ranked, "held-out calibration")   # the report's `sensitivity`

Each candidate is the dense model with that one layer deployed as the run deploys it
(export.build on [layer]: its compressed weights, as DequantizeLinear codes when quantized,
and its input Q/DQ with activation quantization), measured like the run's fidelity
(verify.evaluate: relative output error, the largest over the outputs). Corrections
(--correct) are not applied: the ranking is of the layer solves.

Each candidate runs as the piece that differs from the dense model (diffpiece.py: the
layer's node, its Q/DQ nodes and everything after them), fed the dense values of the tensors
crossing into it from one dense run a batch for a chunk of candidates; its other outputs are
the dense ones. The same figures as whole-model runs (YOLOv8n, ddddocr's detector: equal;
the largest difference on the bench models 8e-4 relative), in a fraction of the time.
A decoder's KV-cache outputs are left out of the ranking's error (fidelity.cache_outputs).

Suggestion: the layers whose share of the summed squared errors, e_i^2 / sum_j e_j^2, is at
least `min(0.5, 2 / layers)` (twice the mean share), at most `MOST` of them, never all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import onnx

from . import export, pinned
from .calib import CalibrationSource
from .capture import Runtime, activation_infos, measured_bytes
from .diffpiece import DenseRuns, Differ, PieceRun
from .fidelity import cache_outputs
from .layers import Layer
from .solve import HostSolution
from .verify import evaluate

MOST = 3  # layers suggested for --exclude at most
CHUNK_BYTES = 256 << 20  # serialized pieces evaluated together
MOST_CHUNK = 8  # candidates evaluated together at most


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str  # the layer's node name(s), as in the report's layer table
    nodes: tuple[str, ...]  # the node labels --exclude matches
    error: float  # relative output error, only this layer compressed (largest output, the
    # KV-cache outputs aside where there are others: fidelity.cache_outputs)
    rel_error: dict[str, float] = field(default_factory=dict)  # per model output
    top1_agreement: float | None = None
    share: float = 0.0  # error^2 / sum of every layer's error^2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "nodes": list(self.nodes)}


def measure_sensitivity(proto: onnx.ModelProto, layers: list[Layer],
                        solutions: Mapping[str, HostSolution], data: CalibrationSource,
                        batch: int, runtime: Runtime, *, act_values: dict[str, Any] | None = None,
                        target: str = "tensorrt", target_options: Mapping[str, Any] | None = None,
                        token_mask: str | None = None, budget: int = 512 << 20
                        ) -> list[LayerSensitivity]:
    """One LayerSensitivity per layer of `layers` that has a solution, worst first (outputs
    on the token positions of `token_mask`'s input where given: verify.evaluate). `budget`:
    bytes of dense tensors a chunk's pieces read, one batch's."""
    todo = [L for L in layers if L.weight in solutions]
    if not todo:
        return []

    def build(L: Layer) -> onnx.ModelProto:
        return export.build(proto, [L], {L.weight: solutions[L.weight]}, act_scales=act_values,
                            target=target, target_options=target_options)

    outputs = [o.name for o in proto.graph.output if o.type.HasField("tensor_type")]
    aside = tuple(sorted(cache_outputs(proto)))
    measured: list[tuple[Layer, Any]] = []
    for chunk, fetched in _chunks(proto, todo, build, data, batch, budget, runtime):
        dense = DenseRuns(proto, fetched, outputs, runtime)
        runs = {f"#{k}": run for k, (_, run) in enumerate(chunk)}
        for run in runs.values():
            run.dense = dense
        fid = evaluate({"dense": dense, **runs}, data, batch, token_mask=token_mask,
                       aside=aside)
        measured += [(L, fid[f"#{k}"]) for k, (L, _) in enumerate(chunk)]
        del dense, runs, run
        chunk.clear()  # its sessions go before the next chunk's are built
    total = sum(f.error ** 2 for _, f in measured) or 1.0
    ranked = [LayerSensitivity(L.name, tuple(u.node for u in L.uses), f.error,
                               dict(f.rel_error), f.top1_agreement, f.error ** 2 / total)
              for L, f in measured]
    return sorted(ranked, key=lambda s: -s.error)


def _chunks(proto: onnx.ModelProto, todo: list[Layer],
            build: Callable[[Layer], onnx.ModelProto], data: CalibrationSource, batch: int,
            budget: int, runtime: Runtime) -> Iterator[tuple[list[tuple[Layer, PieceRun]],
                                                            list[str]]]:
    """The candidates, built, diffed and made their pieces' sessions, in chunks evaluated
    together: at most MOST_CHUNK (and CHUNK_BYTES of pieces), the dense tensors their
    pieces read (graph inputs aside: fed) within `budget` bytes a run of `batch` samples (the
    sizes shape inference cannot tell measured, capture.measured_bytes; one still unknown
    counted as budget / MOST_CHUNK); each chunk with those tensors."""
    differ = Differ(proto)
    inputs = [i.name for i in proto.graph.input]
    names = inputs + [o for n in proto.graph.node for o in n.output if o]
    feed = next(iter(data.batches(batch)))[1]
    sizes, types = activation_infos(proto, names, feed)
    if None in sizes.values():  # shapes computed at run time: measured on one sample
        sizes = measured_bytes(proto, sizes, feed, data, runtime, budget)
    outputs = {o.name for o in proto.graph.output if o.type.HasField("tensor_type")}
    unknown = budget // MOST_CHUNK
    pending, left = None, iter(todo)
    while True:
        chunk: list[tuple[Layer, PieceRun]] = []
        held: set[str] = set()
        while len(chunk) < MOST_CHUNK:
            if pending is None:
                L = next(left, None)
                if L is None:
                    break
                model = build(L)
                pending = (L, PieceRun(model, differ.piece(model), outputs, runtime, types))
                del model
            more = held | (set(pending[1].crossing) - set(inputs))
            if chunk and (sum(sizes.get(n) or unknown for n in more) > budget or sum(
                    r.nbytes for _, r in chunk) + pending[1].nbytes > CHUNK_BYTES):
                break  # the next chunk's first
            chunk.append(pending)
            held, pending = more, None
        if not chunk:
            return
        yield chunk, sorted(held)


def suggest_exclude(ranked: list[LayerSensitivity]) -> list[LayerSensitivity]:
    """The layers to exclude first: see the module docstring."""
    if len(ranked) < 2:
        return []
    least = min(0.5, 2.0 / len(ranked))
    return [s for s in ranked[:MOST] if s.share >= least][:len(ranked) - 1]


def exclude_flags(layers: list[LayerSensitivity]) -> str:
    """`--exclude 'node'` for every node of `layers` (pinned.exclude_flags)."""
    return pinned.exclude_flags(n for s in layers for n in s.nodes)


def stage(proto: onnx.ModelProto, layers: list[Layer], done: Any, data: Any, runtime: Runtime,
          cfg: Any, clock: dict[str, float], one_shot: Callable[[Any], Any]) -> dict[str, Any]:
    """--sensitivity (timed into clock["sensitivity"] when it runs): the report's ranking of
    `done`'s solutions on data.ranking_set(). Under --sequential on those of a one-shot
    solve, `one_shot(cfg)` with run.sequential off: a sequential layer's weights also undo
    the error of the layers before it, which, alone in the dense model, reads as its own
    (docs/conversion-time.md "--sensitivity under --sequential")."""
    if not (cfg.run.sensitivity and done.solutions):
        return {}
    t = time.perf_counter()
    if cfg.run.sequential:
        done = one_shot(replace(cfg, run=replace(cfg.run, sequential=False)))
    name, ds = data.ranking_set()
    ranked = measure_sensitivity(
        proto, layers, done.solutions, ds, data.run_batch, runtime, act_values=done.act_values,
        target=cfg.export.runtime, target_options=cfg.export.target_options(),
        token_mask=data.token_mask, budget=(cfg.run.memory_budget_mb << 20) // 4)
    clock["sensitivity"] = clock.get("sensitivity", 0.0) + time.perf_counter() - t
    out = summarize(ranked, name, ds.n, sorted(cache_outputs(proto)))
    return {**out, "solves": "one-shot" if cfg.run.sequential else "the run's"} if out else {}


def summarize(ranked: list[LayerSensitivity], set_name: str, samples: int,
              aside: list[str] | None = None) -> dict[str, Any]:
    """The report's `sensitivity`: the data set, the ranking and the suggestion; `aside`:
    the outputs the ranking's errors leave out (fidelity.cache_outputs)."""
    if not ranked:
        return {}
    first = suggest_exclude(ranked)
    return {"set": set_name, "samples": samples, "layers": [s.to_dict() for s in ranked],
            "exclude": [s.layer for s in first], "flags": exclude_flags(first),
            "outputs_aside": sorted(aside or [])}
