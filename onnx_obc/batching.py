"""Capture a model whose batch axis is fixed at 1 in batches of many samples.

A model exported with a fixed batch of one ([1, 3, H, W]) takes one onnxruntime run per
calibration sample, and the capture is then most of a W8A8 run (docs/conversion-time.md).
Most such models compute their shapes at run time (Shape -> Gather -> Reshape) and
run as well on a batch of N: this module builds the capture session from the same graph with
every per-sample input's sample axis made symbolic (its value_info and output shapes dropped
while the session is built; the proto is restored afterwards) and checks, before any work,
that a run on PROBE samples at once gives every captured tensor of each sample as the run on
that sample alone does (one axis PROBE times the sample's size, holding the samples one
after another or interleaved, the slices equal within float rounding). A model that
hard-codes its batch (Reshape to [1, -1], a fixed Expand) fails that check or the run
itself, and is captured one sample per run as before. The caller gets each sample's tensors
as the per-sample runs would have given them (views into the batched outputs), so
everything downstream is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx

log = logging.getLogger(__name__)
PROBE = 2  # samples of the check run
RTOL = 1e-4  # |batched slice - alone| <= RTOL * |alone| (norms; onnxruntime's kernels may
# differ in float rounding with the batch size, a mixed-up batch differs at order 1)
SYMBOL = "obc_batch"


@contextmanager
def batch_free(model: onnx.ModelProto, axes: dict[str, int | None]) -> Iterator[None]:
    """While the block runs, `model` with the sample axis (`axes`, None: fed whole) of each
    input symbolic, no value_info and no output shapes (either could pin the batch); the
    graph's inputs, value_info and outputs are restored afterwards."""
    g = model.graph
    saved = onnx.GraphProto()
    saved.input.extend(g.input)
    saved.value_info.extend(g.value_info)
    saved.output.extend(g.output)
    try:
        for vi in g.input:
            ax = axes.get(vi.name)
            if ax is not None and ax < len(vi.type.tensor_type.shape.dim):
                dim = vi.type.tensor_type.shape.dim[ax]
                dim.Clear()
                dim.dim_param = SYMBOL
        del g.value_info[:]
        for o in g.output:
            o.type.tensor_type.ClearField("shape")
        yield
    finally:
        for field in ("input", "value_info", "output"):
            del getattr(g, field)[:]
            getattr(g, field).extend(getattr(saved, field))


def sample_axes(sess: Any, names: list[str], data: Any
                ) -> dict[str, tuple[int, bool]] | None:
    """Each of `names`' sample layout (axis, interleaved) in `sess` (a batch-free session,
    batch_free) when its run on the first PROBE samples at once gives every sample's tensors
    as its run on that sample alone (the batch-1 graph); None when it does not, cannot run,
    or there are fewer than PROBE samples."""
    n, feed = next(iter(data.batches(PROBE)), (0, None))
    if n < PROBE or not names:
        return None
    try:
        together = sess.run(names, feed)
        alone = [sess.run(names, f) for _, f in data.head(PROBE).batches(1)]
    except Exception as exc:  # onnxruntime's errors have no common base class
        log.info("batched capture refused: the batch-free model does not run (%s)", exc)
        return None
    axes = {}
    for k, (name, y) in enumerate(zip(names, together)):
        ys = [a[k] for a in alone]
        found = next((ax for ax in _axes(y.shape, ys[0].shape) if all(
            _close(take_sample(y, ax, i, PROBE), ys[i]) for i in range(PROBE))), None)
        if found is None:
            log.info("batched capture refused: %r is not per-sample in the batched run", name)
            return None
        axes[name] = found
    return axes


def _axes(batched: tuple[int, ...], single: tuple[int, ...]) -> list[tuple[int, bool]]:
    """The (axis, interleaved) layouts PROBE samples can take in `batched`: one axis PROBE
    times the single sample's size, the rest equal; the samples one after another along it
    (a stacked batch axis, or a batch folded into the next axis as [N * T, C]) or
    interleaved (a batch folded after another axis: [T, N, C] -> [T * N, C])."""
    if len(batched) != len(single):
        return []
    diff = [i for i, (a, b) in enumerate(zip(batched, single)) if a != b]
    if len(diff) != 1 or batched[diff[0]] != PROBE * single[diff[0]]:
        return []
    return [(diff[0], False)] + ([(diff[0], True)] if single[diff[0]] > 1 else [])


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not np.issubdtype(a.dtype, np.floating):
        return bool(np.array_equal(a, b))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        return False
    return float(np.linalg.norm(a64 - b64)) <= RTOL * float(np.linalg.norm(b64)) + 1e-30


def per_sample(sess: Any, names: list[str], axes: dict[str, tuple[int, bool]],
               inputs: dict[str, int], batches: Any
               ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """capture.capture's (1, {tensor: activation}) for each sample, from one batched run per
    batch: `axes` the captured tensors' layouts (sample_axes), `inputs` the feed's sample
    axes."""
    for samples, feed in batches:
        outs = dict(zip(names, sess.run(names, feed)))
        for i in range(samples):
            acts = {n: take_sample(v, (inputs[n], False), i, samples) for n, v in feed.items()}
            acts.update({n: take_sample(v, axes[n], i, samples) for n, v in outs.items()})
            yield 1, acts


def take_sample(v: np.ndarray, layout: tuple[int, bool], i: int, samples: int) -> np.ndarray:
    """Sample i of `samples` in v (a view): along the axis, the i-th of `samples` equal
    parts, or every samples-th element from i (interleaved)."""
    ax, interleaved = layout
    size = v.shape[ax] // samples
    part = slice(i, None, samples) if interleaved else slice(i * size, (i + 1) * size)
    return v[(slice(None),) * ax + (part,)]
