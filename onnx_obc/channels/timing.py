"""The latency budget of channel pruning (`--channel-budget latency`): a FLOP saved in one
layer is not a microsecond saved in another (small or memory-bound layers, the float LSTM
or attention the FLOP count leaves out), so each site's saving is measured, not counted.

Per site the subgraph between its producer and its consumer (channels/subgraph.py) runs
in onnxruntime at the dense width and cut (export/shrink.py) at up to POINTS counts
spread over its allowed range, one session each: the run's providers and custom ops, 1
intra-op and inter-op thread (the deployment figure bench/bench_channels.py reports, and
per-layer times that add up, which they do not when small layers share a thread pool),
ORT_ENABLE_ALL (Conv + BN + activation fuse as in the whole model). The sessions run in
alternation (drifts in the machine's load hit all alike) after one warm-up run, at least
ROUNDS rounds and until SECONDS have passed; each gets its median. The saving at count k
is the dense median less the cut one, linear in k between the timed counts. The model is
timed on the same batch (the first BATCH calibration samples, fewer when the run's batch
is smaller) MODEL_ROUNDS times and once after each site, its median taken over the same
stretch of the machine's load as the sites' (a loaded machine's load drifts 2x and more
within a minute, docs/channels.md). `--channels F` then means: the predicted saving reaches F of
the model's measured latency, the prediction being the curves summed less the double
count of a layer both sites of a chain cut (the consumer of one, the producer of the
next: both subgraphs time it), taken as its FLOP share as flops.saved_macs does.
cut_channels times the cut model against the dense one (latency_report), so the report
shows the prediction beside what happened.

Costs: one dense run capturing the subgraphs' inputs, POINTS small sessions per site for
~SECONDS each, the model MODEL_ROUNDS + sites + 1 times, 2 x (MODEL_ROUNDS + 1) for the
report.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from tqdm.auto import tqdm

from ..export.shrink import shrink
from .allocate import allowed, site_align
from .allocate import by_saving as allocate_by_saving
from .flops import cut_rows
from .subgraph import capture, site_subgraph, typed

BUDGETS = ("flops", "latency")
POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # fractions of a site's largest allowed count timed
ROUNDS = 9  # per site: at least this many alternating rounds ...
SECONDS = 0.3  # ... and until this long has passed
MODEL_ROUNDS = 5  # the whole model (dense; dense and cut for the report): rounds only
BLOCK = 0.02  # seconds of back-to-back runs a whole model's round takes (ort_timer `block`)
BATCH = 8  # samples timed per run (fewer when the run's batch is smaller: fixed batch 1)

Timer = Callable[[Sequence[onnx.ModelProto], dict], list[float]]  # models, feed -> seconds


@dataclass(frozen=True)
class LatencyTable:
    model: float  # the dense model's median seconds on the batch
    curves: list[np.ndarray]  # per site: predicted seconds saved removing k = 0 .. C-1
    points: list[tuple[tuple[int, ...], tuple[float, ...]]]  # per site: (counts, seconds)
    seconds: float  # the measuring took
    note: str  # why some sites count no saving ("" when all were measured)


def ort_timer(runtime: Any = None, rounds: int = ROUNDS, seconds: float = SECONDS,
              keep: bool = False, stop: Callable[[list[list[float]]], bool] | None = None,
              block: float = 0.0) -> Timer:
    """Median seconds of each model on `feed`, 1 thread, run in alternation; `keep`: a
    model timed again (the same object) reuses its session, already warm; `stop`: called
    after each round with every model's times so far, True ends the timing early; `block`
    > 0: in each round a model runs back to back for about that many seconds (its per-run
    mean counts; at least one run), as a deployed model runs: one run right after another
    model's pays for the switch (PP-LCNet: about 0.3 ms of its 2.4-3.7, fp32 and W8A8
    alike, which pulls their ratio toward 1; bench/deploy.py BLOCK_S)."""
    built: dict[int, tuple[onnx.ModelProto, Any]] = {}

    def timer(models: Sequence[onnx.ModelProto], feed: dict) -> list[float]:
        import onnxruntime as ort

        from ..capture import Runtime
        from ..diskdata import session_options

        rt = runtime or Runtime()
        for m in models:
            if id(m) not in built:
                opts = rt.options(optimize=True)
                opts.intra_op_num_threads = opts.inter_op_num_threads = 1
                shared = session_options(m, opts)  # tensors kept in the input's data file
                s = ort.InferenceSession(m.SerializeToString(), opts,
                                         providers=list(rt.providers))
                s._obc_shared = shared  # the mapped tensors live as long as the session
                s.run(None, {i.name: feed[i.name] for i in s.get_inputs()})  # warm-up
                built[id(m)] = (m, s)
        sessions = [built[id(m)][1] for m in models]
        feeds = [{i.name: feed[i.name] for i in s.get_inputs()} for s in sessions]
        n = [_block_runs(s, f, block) for s, f in zip(sessions, feeds)]
        times: list[list[float]] = [[] for _ in sessions]
        t_end = time.perf_counter() + seconds
        while len(times[0]) < rounds or time.perf_counter() < t_end:
            for s, f, ts, k in zip(sessions, feeds, times, n):
                t = time.perf_counter()
                for _ in range(k):
                    s.run(None, f)
                ts.append((time.perf_counter() - t) / k)
            if len(times[0]) >= 20 * rounds or (stop is not None and stop(times)):
                break
        if not keep:
            built.clear()
        return [statistics.median(ts) for ts in times]
    return timer


def _block_runs(session: Any, feed: dict, block: float) -> int:
    """Runs of `session` that take about `block` seconds (one run timed), at least one."""
    if block <= 0:
        return 1
    t = time.perf_counter()
    session.run(None, feed)
    return max(1, round(block / max(time.perf_counter() - t, 1e-6)))


def latency_table(plan: Any, align: int, timer: Timer | None = None) -> LatencyTable:
    """The dense model's latency and each solved site's saving curve (plan: stage.ChannelPlan)
    on the first calibration batch; a site whose subgraph cannot be cut or run saves 0."""
    t0 = time.perf_counter()
    feeds = _batch(plan)
    zero = [np.zeros(s.site.channels) for s in plan.solved]
    if not feeds:
        return LatencyTable(0.0, zero, [((0,), (0.0,))] * len(zero), 0.0,
                            "no calibration batch to time the model on: no site saves")
    feed = feeds[0]
    whole = timer or ort_timer(plan.runtime, 1, 0.0, keep=True)  # one run per site, spread over the
    model = [whole([plan.proto], feed)[0] for _ in range(MODEL_ROUNDS)]  # table: same load
    timer = timer or ort_timer(plan.runtime)
    subs = [site_subgraph(plan.proto, s.site) for s in plan.solved]
    values = capture(plan.proto, feed, [n for _, i, o in subs for n in i + o], plan.runtime)
    curves, points, failed = [], [], []
    for s, (sub, names, outs) in tqdm(list(zip(plan.solved, subs)), desc="latency timing",
                                      unit="site", disable=not getattr(plan, "progress", False)):
        C, a = s.site.channels, site_align(s.site, align)
        ks = counts_to_time(C, a)
        try:
            sub = typed(sub, names, outs, values)
            cut = [sub if k == 0 else shrink(sub, [s.site], [np.arange(C - k)]) for k in ks]
            t = timer(cut, {n: values[n] for n in names})
            saved = [t[0] - x for x in t]
            model.append(whole([plan.proto], feed)[0])
        except Exception as e:  # noqa: BLE001 - a subgraph that will not cut or run: no saving
            failed.append(f"{s.site.producer.name} ({type(e).__name__}: {e})"[:160])
            ks, saved = [0], [0.0]
        points.append((tuple(ks), tuple(saved)))
        curves.append(np.interp(np.arange(C), ks, saved))
    note = (f"--channel-budget latency: {len(failed)} site(s) could not be timed and count "
            f"no saving: {'; '.join(failed)}") if failed else ""
    return LatencyTable(statistics.median(model), curves, points, time.perf_counter() - t0,
                        note)


def counts_to_time(C: int, align: int) -> list[int]:
    """0 and the allowed counts (leaving >= 1 channel) nearest POINTS of the largest."""
    opts = allowed(C - 1, C, align)
    return sorted({min(opts, key=lambda k: (abs(k - p * opts[-1]), k)) for p in POINTS})


def latency_counts(plan: Any, fraction: float, align: int, method: str,
                   scale: list | None = None, timer: Timer | None = None
                   ) -> tuple[list[int], list[str]]:
    """Counts whose predicted saving (`predicted`) reaches `fraction` of the model's latency
    (the DP or uniform over plan.latency's curves; `scale`: sensitivity.py's output
    factors, None for the layer objective), re-solving a site whose traced prefix runs
    out; the goal is raised by the overlap's shortfall, as stage._select does for FLOPs."""
    from .sensitivity import scaled_trace
    from .stage import _solve

    if plan.latency is None:
        plan.latency = latency_table(plan, align, timer)
    tab, target = plan.latency, fraction * plan.latency.model
    if tab.model <= 0:
        return [0] * len(plan.solved), [tab.note]
    aligns = [site_align(s.site, align) for s in plan.solved]

    def select(goal: float) -> list[int]:
        traces = [s.trace if scale is None else scaled_trace(s.trace, s.energy, p)
                  for s, p in zip(plan.solved, scale or plan.solved)]
        return allocate_by_saving(method, traces, [s.energy for s in plan.solved],
                                  tab.curves, goal, aligns)

    def reach() -> list[int]:
        goal, counts, last = target, [], None
        for _ in range(8):
            counts = select(goal)
            saved = predicted(tab, counts, plan.sites)
            if saved >= target or counts == last:
                break
            goal, last = max(goal, predicted(tab, counts)) + target - saved, counts
        return counts
    counts = reach()
    short = [i for i, (k, s) in enumerate(zip(counts, plan.solved))
             if k == len(s.trace.losses) < s.site.channels - 1]
    for i in short:
        plan.solved[i] = _solve(plan.sites[i], plan.weights, plan.hessians, plan.backend,
                                plan.damp, plan.sites[i].channels - 1)
    counts = reach() if short else counts
    notes = [tab.note] if tab.note else []
    saved = predicted(tab, counts, plan.sites)
    if saved < target:
        notes.append(f"channel pruning saves a predicted {saved / tab.model:.1%} of the "
                     f"model's latency, short of prune.channels {fraction:.1%}: the prunable "
                     "sites' subgraphs take too little of it")
    return counts, notes


def predicted(tab: LatencyTable, counts: Sequence[int], sites: Sequence[Any] | None = None
              ) -> float:
    """Seconds the sites' curves predict `counts` save, summed; with `sites`, less the
    double count of a layer cut on both sides (consumer of one site, producer of another:
    both subgraphs time it), taken as its FLOP share (flops.saved_macs) of the saving of
    the site it is the consumer of."""
    total = float(sum(c[k] for c, k in zip(tab.curves, counts)))
    if sites is None:
        return total
    rows = cut_rows(list(sites), list(counts))
    return total - float(sum(c[k] * sum(rows.get(x.weight, 0) * cell
                                        for x, cell in s.consumer_cells()) / s.macs
                             for s, k, c in zip(sites, counts, tab.curves) if k and s.macs))


def latency_report(plan: Any, counts: Sequence[int], model: onnx.ModelProto,
                   timer: Timer | None = None) -> dict:
    """The JSON entry of a latency-budget cut: the model's seconds, the predicted and the
    measured saving (the cut `model` timed against the dense one, in alternation)."""
    tab, feeds = plan.latency, _batch(plan)
    dense, cut = (timer or ort_timer(plan.runtime, MODEL_ROUNDS, 0.0))(
        [plan.proto, model], feeds[0]) if feeds else (tab.model, tab.model)
    return {"budget": "latency", "model_ms": 1e3 * tab.model,
            "predicted_saved_ms": 1e3 * predicted(tab, counts, plan.sites),
            "measured_dense_ms": 1e3 * dense, "measured_cut_ms": 1e3 * cut,
            "timing_seconds": tab.seconds,
            "points": [{"counts": list(k), "saved_ms": [1e3 * x for x in v]}
                       for k, v in tab.points]}


def _batch(plan: Any) -> list[dict]:
    """[the first min(BATCH, run's batch) calibration samples], [] without any."""
    from .sensitivity import sample_feeds

    b = max(1, min(BATCH, plan.batch))
    return sample_feeds(plan.data, b, b)[:1]
