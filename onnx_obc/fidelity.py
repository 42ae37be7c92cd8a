"""What a model's fidelity is, and which outputs it reads.

Per output, the relative error sqrt(sum|y_c - y|^2 / sum|y|^2) against the dense model;
top-1 agreement for scores shaped [batch, classes] or [batch, steps, classes]; accuracy
when labels are given. The model's error, one number (the report's table, the measured
decisions), is over its outputs but a decoder's KV cache (cache_outputs): a `present`
output holds the layer's own keys or values unmixed, so its error is that projection's,
not what the logits see, and it is the largest of a Llama's nine outputs (0.055 against the
logits' 0.025, W4); the logits of the whole sequence already carry every key and value's
error.

    fid = score(out_names, runs, labels, aside=cache_outputs(proto))   # model -> Fidelity
    fid["compressed"].error                                            # the headline
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from .refs import sum_sq as _sum_sq

# Nodes that move a tensor without computing on it, between a past input and its cache output
PASSING = {"Identity", "Concat", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze"}
# Cache outputs as Hugging Face's exporters name them (present.0.key, present.3.encoder.value)
NAMED = re.compile(r"present[._]", re.IGNORECASE)


@dataclass
class Fidelity:
    """Fidelity of one model on one data set (dense model as the reference)."""

    samples: int = 0
    rel_error: dict[str, float] = field(default_factory=dict)  # per output
    top1_agreement: float | None = None
    accuracy: float | None = None
    aside: tuple[str, ...] = ()  # outputs the model's error leaves out (cache_outputs)

    @property
    def counted(self) -> dict[str, float]:
        """The outputs' errors the model's error reads: all but those aside (all when every
        one is aside)."""
        kept = {k: e for k, e in self.rel_error.items() if k not in self.aside}
        return kept or dict(self.rel_error)

    @property
    def error(self) -> float:
        """The model's error: the largest of the counted outputs' (0 without outputs)."""
        return max(self.counted.values(), default=0.0)

    @property
    def mean_error(self) -> float:
        """The mean of the counted outputs' errors: what the measured decisions compare."""
        e = self.counted
        return float(np.mean(list(e.values()))) if e else 0.0

    def to_dict(self) -> dict:
        return {"samples": self.samples, "error": self.error, "rel_error": self.rel_error,
                "top1_agreement": self.top1_agreement, "accuracy": self.accuracy,
                **({"outputs_aside": list(self.aside)} if self.aside else {})}


def is_logits(y: np.ndarray) -> bool:
    """Scores over classes on the last axis: [batch, classes] or [batch, steps, classes] (a
    CTC head). Not a 4-D (or higher) map such as a detector's [N, 1, H, W] probabilities,
    whose last axis is the image's width: an argmax over it agrees with nothing; nor
    independent probabilities (all in [0, 1], rows not summing to 1: Basic Pitch's sigmoid
    note posteriors [N, 172, 88], several notes at once or none), nor an L2-normalized
    embedding (every row of unit norm: a sentence embedder's [N, 384], whose largest
    coordinate is no class)."""
    if not (2 <= y.ndim <= 3 and y.shape[-1] > 1):
        return False
    if np.issubdtype(y.dtype, np.floating) and y.size and y.min() >= 0 and y.max() <= 1:
        return bool(np.allclose(y.sum(-1, dtype=np.float64), 1.0, atol=1e-3))
    return not np.allclose(np.linalg.norm(y.astype(np.float64), axis=-1), 1.0, atol=1e-3)


def cache_outputs(proto: onnx.ModelProto) -> set[str]:
    """The graph outputs that are a decoder's KV cache: made by a Concat one of whose inputs
    is a graph input (a past_key_values tensor), directly or through PASSING nodes of one
    data input each (an exporter's one-input Concat, a Cast, a Transpose); or, with no past
    to concatenate (a first decoding step, an encoder-decoder's cross-attention cache), named
    as Hugging Face's exporters name them (NAMED). A layer's own key or value projection
    lands in its layer's cache output unmixed, so its error there is the layer's own, not
    what the logits see. None where every output would be one."""
    g = proto.graph
    made = {o: n for n in g.node for o in n.output if o}
    fed = {i.name for i in g.input} - {t.name for t in g.initializer}

    def from_input(name: str) -> bool:
        for _ in range(len(g.node) + 1):
            if name in fed:
                return True
            n = made.get(name)
            data = [x for x in n.input if x in made or x in fed] if n is not None else []
            if n is None or n.op_type not in PASSING or len(data) != 1:
                return False
            name = data[0]
        return False

    found = {o.name for o in g.output if NAMED.match(o.name) or (n := made.get(o.name))
             is not None and n.op_type == "Concat" and any(from_input(x) for x in n.input if x)}
    return found if len(found) < sum(o.type.HasField("tensor_type") for o in g.output) else set()


def scored_outputs(proto: onnx.ModelProto) -> list[str]:
    """The graph outputs the model's error reads, in order: all but its KV cache."""
    aside = cache_outputs(proto)
    return [o.name for o in proto.graph.output if o.name not in aside]


def score(out_names: list[str], runs: Iterable[tuple[int, dict[str, list[np.ndarray]]]],
          labels: np.ndarray | None, reference: str = "dense", aside: Iterable[str] = ()
          ) -> dict[str, Fidelity]:
    """The fidelity sums over `runs`: (samples, {model: its outputs}) per batch; `aside`:
    the outputs the model's error leaves out (cache_outputs)."""
    err: dict[str, dict[str, float]] = {}
    ref_sq = {n: 0.0 for n in out_names}
    agree: dict[str, int] = {}
    correct: dict[str, int] = {}
    seen = positions = 0
    logits, i, ints = None, 0, set()  # i: the scores (after integer outputs: sklearn's labels)
    for samples, ys in runs:
        for k in ys:
            err.setdefault(k, {n: 0.0 for n in out_names})
            agree.setdefault(k, 0)
            correct.setdefault(k, 0)
        ref = ys[reference]
        if logits is None:
            i = next((j for j, y in enumerate(ref) if np.issubdtype(y.dtype, np.floating)), 0)
            logits = is_logits(ref[i])  # integer outputs beside floats: no relative error
            ints = {n for n, y in zip(out_names, ref) if not np.issubdtype(y.dtype, np.floating)}
            ints = ints if len(ints) < len(out_names) else set()
        for n, y in zip(out_names, ref):
            ref_sq[n] += _sum_sq(y)
        for k, outs in ys.items():
            for n, y, y0 in zip(out_names, outs, ref):
                err[k][n] += 0.0 if k == reference else _sum_sq(y, y0)
            if logits:
                agree[k] += int((outs[i].argmax(-1) == ref[i].argmax(-1)).sum())
                if labels is not None:
                    lab = labels[seen:seen + samples]
                    correct[k] += int((outs[i].argmax(-1) == lab.reshape(
                        outs[i].shape[:-1])).sum())
        positions += int(np.prod(ref[i].shape[:-1])) if logits else 0
        seen += samples
    off = tuple(n for n in out_names if n in set(aside) and n not in ints)
    result = {}
    for k in err:
        rel = {n: float(np.sqrt(err[k][n] / ref_sq[n])) if ref_sq[n] > 0 else float(
            np.sqrt(err[k][n])) for n in out_names if n not in ints}
        result[k] = Fidelity(
            samples=seen, rel_error=rel,
            top1_agreement=agree[k] / positions if logits and positions else None,
            accuracy=correct[k] / positions if logits and labels is not None and positions
            else None, aside=off)
    return result
