"""Calibration samples held in memory (an .npz, a directory of samples, synthesized
inputs): the array source. Random access, so the held-out split is a seeded random choice."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..errors import CalibrationError

SYNTHETIC_SAMPLES = 64


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # int = fixed, str/None = symbolic


@dataclass(frozen=True)
class DataSet:
    """Stacked samples: arrays[name] has axis 0 = samples."""

    arrays: dict[str, np.ndarray]
    source: str
    synthetic: bool = False
    labels: np.ndarray | None = None

    @property
    def n(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def head(self, k: int) -> DataSet:
        """The first k samples."""
        return self.take(np.arange(min(k, self.n)))

    def take(self, idx: np.ndarray) -> DataSet:
        labels = None if self.labels is None else self.labels[idx]
        return DataSet({k: v[idx] for k, v in self.arrays.items()}, self.source,
                       self.synthetic, labels)

    def batches(self, batch_size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for i in range(0, self.n, batch_size):
            feed = {k: v[i:i + batch_size] for k, v in self.arrays.items()}
            yield next(iter(feed.values())).shape[0], feed

    def split(self, h: int, seed: int) -> tuple[DataSet, DataSet]:
        """(calibration part, h held-out samples chosen at random with `seed`), 0 < h < n."""
        perm = np.random.default_rng(seed).permutation(self.n)
        return self.take(np.sort(perm[h:])), self.take(np.sort(perm[:h]))


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tt.shape.dim
        )
        specs.append(InputSpec(vi.name, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)),
                               dims))
    return specs


def synthesize(model: onnx.ModelProto, samples: int | None, seed: int) -> DataSet:
    """Random inputs from the model's input spec. NOT representative: results are only a
    smoke test. Refuses when a non-batch dimension is symbolic."""
    rng = np.random.default_rng(seed)
    n = samples or SYNTHETIC_SAMPLES
    arrays = {}
    for s in input_specs(model):
        dims = list(s.shape)
        for ax, dim in enumerate(dims[1:], start=1):
            if not isinstance(dim, int) or dim <= 0:
                raise CalibrationError(
                    f"cannot synthesize input {s.name!r}: axis {ax} is symbolic ({dim!r}). "
                    "Give real calibration data with --calib."
                )
        shape = (n, *dims[1:])
        if s.dtype.kind == "f":
            arrays[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype.kind in "iu":
            arrays[s.name] = rng.integers(0, 2, size=shape).astype(s.dtype)
        else:
            arrays[s.name] = np.zeros(shape, dtype=s.dtype)
    return DataSet(arrays, "synthetic (random normal)", synthetic=True)
