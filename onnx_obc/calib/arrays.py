"""Calibration samples held in memory (an .npz, a directory of samples, synthesized
inputs): the array source. Random access, so the held-out split is a seeded random choice."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from ..errors import CalibrationError
from .layout import InputSpec, Layout, input_specs

SYNTHETIC_SAMPLES = 64


@dataclass(frozen=True)
class DataSet:
    """Samples stacked along each input's sample axis (`axes`; None: axis 0 of every input).
    Arrays held in memory are indexed eagerly; memory-mapped ones (np.memmap) lazily: `rows`
    selects the samples, read batch by batch."""

    arrays: dict[str, np.ndarray]
    source: str
    synthetic: bool = False
    labels: np.ndarray | None = None
    axes: dict[str, int | None] | None = None  # sample axis per input; None: fed whole
    rows: np.ndarray | None = None  # the samples in use (memory-mapped arrays only)
    read_as: str = "in memory"  # how the samples are held, for the report
    dtypes: dict[str, np.dtype] | None = None  # memory-mapped arrays: batches cast to these

    def axis(self, name: str) -> int | None:
        return 0 if self.axes is None else self.axes[name]

    @property
    def mapped(self) -> bool:
        return any(isinstance(v, np.memmap) for v in self.arrays.values())

    @property
    def n(self) -> int:
        if self.rows is not None:
            return len(self.rows)
        name = next(k for k in self.arrays if self.axis(k) is not None)
        return self.arrays[name].shape[self.axis(name)]

    def head(self, k: int) -> DataSet:
        """The first k samples."""
        return self.take(np.arange(min(k, self.n)))

    def take(self, idx: np.ndarray) -> DataSet:
        labels = None if self.labels is None else self.labels[idx]
        if self.mapped:
            rows = np.arange(self.n) if self.rows is None else self.rows
            return replace(self, rows=rows[idx], labels=labels)
        return replace(self, arrays=self._pick(idx), labels=labels)

    def _pick(self, idx: np.ndarray | slice) -> dict[str, np.ndarray]:
        out = {}
        for k, v in self.arrays.items():
            ax = self.axis(k)
            if ax is None:
                out[k] = v
            elif isinstance(idx, slice):
                out[k] = np.asarray(np.ascontiguousarray(v[(slice(None),) * ax + (idx,)]))
            else:  # a plain array, not a memmap; indexing, not np.take: on a memmap whose
                # data is not 4-byte aligned in its file (an .npz member's offset) np.take
                # copied at ~40 MB/s (PP-PicoDet's 5.8 MB inputs: 0.12 s a sample, 29 s of a
                # 115 s conversion), indexing at memory speed, the same values
                out[k] = np.ascontiguousarray(v[(slice(None),) * ax + (idx,)])
            if self.dtypes is not None and out[k].dtype != self.dtypes[k]:
                out[k] = out[k].astype(self.dtypes[k])
        return out

    def batches(self, batch_size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for i in range(0, self.n, batch_size):
            j = min(i + batch_size, self.n)
            sel = slice(i, j) if self.rows is None else self.rows[i:j]
            yield j - i, self._pick(sel)

    def split(self, h: int, seed: int) -> tuple[DataSet, DataSet]:
        """(calibration part, h held-out samples chosen at random with `seed`), 0 < h < n."""
        perm = np.random.default_rng(seed).permutation(self.n)
        return self.take(np.sort(perm[h:])), self.take(np.sort(perm[:h]))

    def sample(self, h: int, seed: int) -> DataSet:
        """split's held-out part alone: the other samples are not copied."""
        return self.take(self.sample_rows(h, seed))

    def sample_rows(self, h: int, seed: int) -> np.ndarray:
        """Which of the samples sample(h, seed) takes, in order."""
        return np.sort(np.random.default_rng(seed).permutation(self.n)[:h])

    def shape_feed(self, batch_size: int) -> dict[str, Any]:
        """Objects with the `.shape` of a batch of `batch_size` samples (for sizing)."""
        from .stream import Shape
        out = {}
        for k, v in self.arrays.items():
            ax = self.axis(k)
            out[k] = Shape(v.shape if ax is None else
                           v.shape[:ax] + (min(batch_size, self.n),) + v.shape[ax + 1:])
        return out


def synthesize(model: onnx.ModelProto, samples: int | None, seed: int) -> DataSet:
    """Random inputs from the model's input spec. NOT representative: results are only a
    smoke test. Refuses when a dimension other than the sample axis is symbolic; inputs
    without a sample axis get one random array, fed whole to every run."""
    rng = np.random.default_rng(seed)
    n = samples or SYNTHETIC_SAMPLES
    layout = Layout.of(input_specs(model))
    arrays = {}
    for s in layout.specs:
        dims, sample_ax = list(s.shape), layout.axis[s.name]
        for ax, dim in enumerate(dims):
            if ax != sample_ax and (not isinstance(dim, int) or dim <= 0):
                raise CalibrationError(
                    f"cannot synthesize input {s.name!r}: axis {ax} is symbolic ({dim!r}). "
                    "Give real calibration data with --calib."
                )
        if sample_ax is not None:
            dims[sample_ax] = n
        shape = tuple(dims)
        if s.dtype.kind == "f":
            arrays[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype.kind in "iu":
            arrays[s.name] = rng.integers(0, 2, size=shape).astype(s.dtype)
        else:
            arrays[s.name] = np.zeros(shape, dtype=s.dtype)
    return DataSet(arrays, "synthetic (random normal)", synthetic=True, axes=layout.axis)
