"""Run models in onnxruntime and measure fidelity against the dense model.

Streaming over batches, the measures summed as fidelity.score sums them: relative output
error per output, top-1 agreement, accuracy; the model's error (Fidelity.error) leaves a
decoder's KV-cache outputs aside (fidelity.cache_outputs).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .calib import CalibrationSource
from .calib.tokens import on_tokens
from .capture import Runtime, session
from .fidelity import Fidelity, cache_outputs, score
from .modelio import tensor_outputs, weight_bytes
from .refs import Captured, References

ONE_AT_A_TIME = 1 << 30  # bytes of weights over all the models measured


def evaluate(sessions: dict[str, ort.InferenceSession], data: CalibrationSource, batch_size: int,
             reference: str = "dense", refs: References | None = None, name: str = "",
             samples: Captured | None = None, token_mask: str | None = None,
             aside: tuple[str, ...] = ()) -> dict[str, Fidelity]:
    """Fidelity of every session on `data`, relative to sessions[reference]. `refs`: the
    reference's outputs on this set (`name`) kept from an earlier pass, used instead of
    running it (then `sessions` need not hold it), or kept from this one. `samples`: the
    reference's outputs per sample of this set from the capture's runs, used from the
    second batch on where the first batch's run matches them (Captured.matches).
    `token_mask` (an input, calib/tokens.py): outputs laid out [batch, tokens, ...] scored
    on the token positions only (not with labels). `aside`: the outputs the model's error
    leaves out (fidelity.cache_outputs)."""
    mask = token_mask if data.labels is None else None
    kept = refs.get(name, batch_size) if refs is not None else None
    out_names = refs.names if kept is not None else [
        o.name for o in sessions[reference].get_outputs() if o.type.startswith("tensor")]
    trusted = None if samples is not None and samples.names == out_names else False

    def runs() -> Iterator[tuple[int, dict[str, list[np.ndarray]]]]:
        nonlocal trusted
        store: list | None = [] if refs is not None and kept is None else None
        start = 0
        for i, (n, feed) in enumerate(data.batches(batch_size)):
            ys = {reference: kept[i]} if kept is not None else {}
            got = samples.batch(start, n) if kept is None and trusted is not False else None
            if got is not None and trusted:
                ys[reference] = got
            ys.update((k, s.run(out_names, feed)) for k, s in sessions.items() if k not in ys)
            if got is not None and trusted is None:  # the first batch: run and compared
                trusted = Captured.matches(got, ys[reference])
            start += n
            if store is not None:
                store.append(ys[reference])
            yield n, _tokens(ys, feed, mask)
        if store is not None:
            refs.put(name, batch_size, out_names, store)
    return score(out_names, runs(), data.labels, reference, aside)


def measure(models: dict[str, onnx.ModelProto], sets: dict[str, CalibrationSource],
            batch_size: int, runtime: Runtime, free_batch: int = 0,
            sample_axes: dict[str, int | None] | None = None, refs: References | None = None,
            samples: dict[str, Captured] | None = None, arena: bool = True,
            token_mask: str | None = None) -> dict[str, dict[str, Fidelity]]:
    """Fidelity of every model on every data set, each model run as onnxruntime deploys it
    (graph optimizations on), relative to models["dense"]. Models over `ONE_AT_A_TIME`
    bytes of weights hold only two sessions at once (dense + one, the dense model re-run
    per model) instead of one per model. `free_batch` > 1 (a model whose batch is fixed at
    1, Calibration.free_batch): each model whose batch-free graph passes batching.sample_axes'
    check on its outputs runs `free_batch` samples at once, the others one (sets without
    labels; the measures are sums over samples and positions, whatever the order). On
    ddddocr's recognizer the W8A8 models fail it (DynamicQuantizeLSTM's run-wide scale):
    its dense model in runs of 8 took the verification from 2.45 to 1.65 CPU s. `refs`
    (References): the dense model's outputs kept between calls where each model runs
    whole batches in one session each (not with `free_batch`, nor one at a time);
    `samples` (set name -> Captured): the dense outputs the capture kept, used alike;
    `arena`: the sessions' CPU memory arena (calib.Calibration.arena); `token_mask`: see
    evaluate; the dense model's KV-cache outputs are set aside (fidelity.cache_outputs)."""
    aside = tuple(sorted(cache_outputs(models["dense"])))
    samples, models = samples or {}, {k: scored(m) for k, m in models.items()}
    if sum(weight_bytes(m) for m in models.values()) <= ONE_AT_A_TIME:
        free = _batch_free_sessions(models, sets, runtime, free_batch, sample_axes, arena)
        if free is not None:
            sessions, names = free[0], free[1]  # names: the dense model's outputs
            if all(lay for _, lay in sessions.values()):  # every model: whole batches
                return {name: evaluate({k: s for k, (s, _) in sessions.items()}, ds, free_batch,
                                       refs=refs, name=name, samples=samples.get(name),
                                       token_mask=token_mask, aside=aside)
                        for name, ds in sets.items()}
            return {name: score(names, _per_sample(free, ds, free_batch, samples.get(name),
                                                   token_mask), None, aside=aside)
                    for name, ds in sets.items()}
        known = refs is not None and all(refs.get(n, batch_size) for n in sets)
        sessions = {k: session(m, runtime, True, arena) for k, m in models.items()
                    if not (known and k == "dense")}
        return {name: evaluate(sessions, ds, batch_size, refs=refs, name=name,
                               samples=samples.get(name), token_mask=token_mask, aside=aside)
                for name, ds in sets.items()}
    dense = session(models["dense"], runtime, True, arena)
    out: dict[str, dict[str, Fidelity]] = {name: {} for name in sets}
    for k, m in models.items():
        pair = {"dense": dense} if k == "dense" else {
            "dense": dense, k: session(m, runtime, True, arena)}
        for name, ds in sets.items():
            out[name][k] = evaluate(pair, ds, batch_size, token_mask=token_mask,
                                    aside=aside)[k]
        del pair
    return out


def scored(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each ZipMap output's input (the class scores, a tensor) an output too,
    named alike in every model: what is compared where an output is a sequence of maps
    (skl2onnx's classifiers); `model` itself where none is."""
    zips = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "ZipMap"}
    outs = [o.name for o in model.graph.output if o.name in zips]
    if not outs:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for o in outs:
        m.graph.node.append(onnx.helper.make_node("Identity", [zips[o]], [f"{o}.scores"]))
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(f"{o}.scores"))
    return m


# Ops whose quantization scales come from the whole run (every sample in it): a model with
# them gives each sample other outputs in a run of several (onnxruntime's LSTM rewrite).
DYNAMIC_OPS = {"DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul"}


def measure_on(models: dict[str, onnx.ModelProto], data: Any, runtime: Runtime,
               refs: References | None = None, captured: dict[str, Captured] | None = None
               ) -> dict[str, dict[str, Fidelity]]:
    """measure() on the sets of `data` (calib.Calibration) with its run settings."""
    return measure(models, data.sets(), data.run_batch, runtime, data.free_batch,
                   data.info.get("sample_axes"), refs, captured, data.arena,
                   getattr(data, "token_mask", None))


def variant(dense: onnx.ModelProto, key: str, model: onnx.ModelProto, data: Any,
            runtime: Runtime, refs: References | None = None,
            captured: dict[str, Captured] | None = None) -> tuple[dict[str, Fidelity], float]:
    """One candidate model's fidelity beside `dense` on each set of `data`
    (calib.Calibration), and its mean relative output error on the first set (every float
    output, a decoder's KV cache aside: Fidelity.mean_error): what the measured decisions
    compare (floatcheck.py, allocation/guard.py)."""
    fid = measure_on({"dense": dense, key: model}, data, runtime, refs, captured)
    return {s: v[key] for s, v in fid.items()}, next(iter(fid.values()))[key].mean_error


def _batch_free_sessions(models: dict[str, onnx.ModelProto],
                         sets: dict[str, CalibrationSource], runtime: Runtime, free: int,
                         axes: dict[str, int | None] | None, arena: bool = True
                         ) -> tuple | None:
    """(per model its batch-free session and outputs' sample layouts where it passes the
    check on its outputs, else its batch-1 session and None; the output names; the inputs'
    sample axes), or None where the dense model does not pass (then: the fixed batch)."""
    from .batching import batch_free, sample_axes
    from .calib import input_specs

    if free <= 1 or not sets or any(ds.labels is not None for ds in sets.values()):
        return None
    probe = next(iter(sets.values()))
    inputs = {s.name: 0 for s in input_specs(models["dense"])} | dict(axes or {})
    names = tensor_outputs(models["dense"])
    if any(a is None for a in inputs.values()):
        return None
    out = {}
    for k, m in sorted(models.items(), key=lambda km: km[0] != "dense"):  # dense first
        layouts = None
        if not DYNAMIC_OPS.intersection(n.op_type for n in m.graph.node):
            with batch_free(m, inputs):
                sess = session(m, runtime, True, arena)
            layouts = sample_axes(sess, names, probe)
        if k == "dense" and not layouts:  # the others would gain little: the fixed batch
            return None
        out[k] = (sess, layouts) if layouts else (session(m, runtime, True, arena), None)
    return out, names, inputs


def _per_sample(free: tuple, data: CalibrationSource, batch: int, kept: Captured | None = None,
                token_mask: str | None = None
                ) -> Iterator[tuple[int, dict[str, list[np.ndarray]]]]:
    """(1, {model: its outputs for one sample}) per sample: runs of `batch` samples on the
    batch-free sessions, each sample's slice of the feed on the others. `kept`: the dense
    model's outputs per sample from the capture, used instead of its runs from the second
    batch on where the first batch's runs match them (ddddocr's recognizer, whose W8A8
    models run one sample at a time: the dense model ran again at every measure, 1.3 s of
    its 64 samples each, three times in an onnxruntime-target conversion)."""
    from .batching import take_sample

    sessions, names, inputs = free
    trusted = None if kept is not None and kept.names == names else False
    start = 0
    for samples, feed in data.batches(batch):
        own = [kept.batch(start + i, 1) for i in range(samples)] if trusted is not False else []
        skip = bool(trusted) and all(y is not None for y in own)  # the dense model not run
        run = {k: v for k, v in sessions.items() if not (skip and k == "dense")}
        together = {k: s.run(names, feed) for k, (s, lay) in run.items() if lay}
        checked = []
        for i in range(samples):
            one = {n: take_sample(v, (inputs[n], False), i, samples) for n, v in feed.items()}
            ys = {k: [take_sample(y, lay[n], i, samples) for n, y in zip(names, together[k])]
                  if lay else s.run(names, one) for k, (s, lay) in run.items()}
            if skip:
                ys["dense"] = own[i]
            elif trusted is None and own and own[i] is not None:  # the first batch: compared
                checked.append(Captured.matches(own[i], ys["dense"]))
            yield 1, _tokens(ys, one, token_mask)
        if trusted is None:
            trusted = bool(checked) and all(checked) and len(checked) == samples
        start += samples


def _tokens(ys: dict[str, list[np.ndarray]], feed: dict[str, Any], mask: str | None
            ) -> dict[str, list[np.ndarray]]:
    """Each model's outputs laid out [batch, tokens, ...] cut to the feed's token positions
    (calib/tokens.on_tokens); `ys` itself without a mask."""
    if mask is None or mask not in feed:
        return ys
    return {k: [on_tokens(y, feed, mask) for y in outs] for k, outs in ys.items()}
