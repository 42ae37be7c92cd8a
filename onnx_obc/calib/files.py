"""Calibration data in files, read lazily.

An `.npy`, or an `.npz` saved with numpy.savez (stored, not compressed), is memory-mapped:
only the samples of the batch being run are read. An `.npz` saved with savez_compressed
cannot be mapped; each of its arrays is read into memory once (the report says so). A
directory of sample files (.npz/.npy, images, or any file a preprocessing function reads)
becomes a FileSource: one file read at a time on every pass, batched by shape.
"""

from __future__ import annotations

import logging
import os
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from ..errors import CalibrationError
from .layout import Feed, Layout
from .stream import Scan, Shape, group_batches, shape_feed

log = logging.getLogger(__name__)
LABELS = "labels"
SMALL = 1 << 20  # arrays under 1 MiB are read, not mapped
MAGIC = (b"\x93NUMPY", b"PK\x03\x04", b"PK\x05\x06")  # .npy; .npz (a zip, or an empty one)
FORMATS = ("a .npz with one array per model input (numpy.savez(path, **{input_name: array}), "
           "axis 0 = samples), a .npy for a single-input model, or a directory of them")
ARRAY_FILES = (".npz", ".npy")


def read_arrays(path: str, mapped: bool = True) -> tuple[dict[str, np.ndarray], str]:
    """The arrays of an .npz/.npy ("" for a lone .npy array) and how they are held:
    "memory-mapped" or "in memory" (with the reason)."""
    try:
        with open(path, "rb") as f:  # our handle: closed even when numpy fails mid-read
            if not (head := f.read(6)).startswith(MAGIC):
                raise CalibrationError(f"cannot read calibration data {path!r}: not an "
                                       f".npz/.npy file (it starts with {head!r}); give {FORMATS}")
        if mapped and head.startswith(b"\x93NUMPY"):
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            return {"": a if a.nbytes >= SMALL else np.array(a)}, "memory-mapped"
        if mapped and (arrays := _npz_mapped(path)) is not None:
            return arrays, "memory-mapped"
        with open(path, "rb") as f:
            data = np.load(f, allow_pickle=False)
            arrays = {"": data} if isinstance(data, np.ndarray) else {
                k: data[k] for k in data.files}
        return arrays, ("in memory (a compressed .npz cannot be memory-mapped: save it with "
                        "numpy.savez to stream it)" if mapped else "in memory")
    except CalibrationError:
        raise
    except Exception as exc:
        raise CalibrationError(
            f"cannot read calibration data {path!r} ({exc}). Save it with "
            "numpy.savez(path, **{input_name: array}) with axis 0 = samples, numeric arrays only."
        ) from None


def _npz_mapped(path: str) -> dict[str, np.ndarray] | None:
    """Every array of an uncompressed .npz as a np.memmap into the zip (small ones read),
    or None when a member is compressed or not a plain .npy."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                return None
            raw.seek(info.header_offset)
            local = raw.read(30)
            if local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            raw.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(raw)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(raw)
            if dtype.hasobject:
                return None
            key = info.filename[:-4]
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if size < SMALL:
                out[key] = np.frombuffer(raw.read(size), dtype=dtype).reshape(
                    shape, order="F" if fortran else "C").copy()
            else:
                out[key] = np.memmap(path, dtype=dtype, mode="r", offset=raw.tell(),
                                     shape=shape, order="F" if fortran else "C")
    return out


def single_input(arrays: dict[str, np.ndarray], layout: Layout, path: str) -> dict:
    if "" not in arrays:
        return arrays
    if len(layout.specs) != 1:
        raise CalibrationError(f"{path!r} is a single array but the model has "
                               f"{len(layout.specs)} inputs; use a .npz keyed by input name")
    return {layout.specs[0].name: arrays[""]}


@dataclass(frozen=True)
class FileSource:
    """Samples in files, one file read at a time per pass; `take[i]` samples are used from
    the start of `paths[i]`. The held-out split is a seeded random choice of files."""

    paths: tuple[str, ...]
    take: tuple[int, ...]
    read: Callable[[str], Feed]  # a file -> its checked samples
    layout: Layout
    source: str
    largest: Feed  # one sample of the largest shape (from the checking pass)
    shapes: int = 1
    synthetic: bool = False
    labels: None = None

    @property
    def n(self) -> int:
        return sum(self.take)

    @property
    def read_as(self) -> str:
        return f"one file at a time ({len(self.paths)} files)"

    def _items(self) -> Iterator[Feed]:
        for path, k in zip(self.paths, self.take):
            item = self.read(path)
            yield item if self.layout.count(item) == k else self.layout.cut(item, 0, k)

    def batches(self, batch_size: int) -> Iterator[tuple[int, Feed]]:
        return group_batches(self._items(), self.layout, batch_size)

    def head(self, k: int) -> FileSource:
        take, left = [], k
        for t in self.take:
            if left <= 0:
                break
            take.append(min(t, left))
            left -= t
        return replace(self, paths=self.paths[:len(take)], take=tuple(take))

    def split(self, held: int, seed: int) -> tuple[FileSource, FileSource]:
        """With one sample per file: exactly the samples DataSet.split would keep out."""
        perm = np.random.default_rng(seed).permutation(len(self.paths))
        cum = np.cumsum([self.take[i] for i in perm])
        cut = int(np.searchsorted(cum, held)) + 1
        return self._subset(perm[cut:]), self._subset(perm[:cut])

    def _subset(self, idx: np.ndarray) -> FileSource:
        idx = np.sort(idx)
        return replace(self, paths=tuple(self.paths[i] for i in idx),
                       take=tuple(self.take[i] for i in idx))

    def shape_feed(self, batch_size: int) -> dict[str, Shape]:
        return shape_feed(self.layout, self.largest, batch_size)


def directory(path: str, layout: Layout, limit: int | None,
              reader: Callable[[str], dict[str, np.ndarray]] | None,
              accepts: Callable[[str], bool]) -> FileSource:
    """A FileSource over the files under `path` (sorted by relative path, subdirectories
    included) that `accepts` takes; .npz/.npy files are read as arrays, the others by
    `reader`. The checking pass reads each file once and stops at `limit` samples."""
    files = sorted(os.path.join(root, f) for root, _, fs in os.walk(path) for f in fs
                   if not f.startswith(".") and accepts(f))
    if not files:
        kinds = ("files its preprocessing function reads" if reader else
                 ".npz or .npy files or images (.png/.jpg/...),")
        raise CalibrationError(f"directory {path!r} has no {kinds} (one sample each)")

    def read(f: str) -> Feed:
        if f.lower().endswith(ARRAY_FILES):
            arrays, _ = read_arrays(f, mapped=False)
            arrays = single_input(arrays, layout, f)
            arrays.pop(LABELS, None)
        else:
            arrays = reader(f)
        return layout.check({k: np.asarray(v) for k, v in arrays.items()},
                            f"{path}: file {os.path.relpath(f, path)!r}", add_axis=True)

    scan, take = Scan(), []
    for f in files:
        item = read(f)
        k = layout.count(item)
        if limit is not None:
            k = min(k, limit - scan.n)
            item = layout.cut(item, 0, k)
        scan.add(item, layout)
        take.append(k)
        if limit is not None and scan.n >= limit:
            break
    return FileSource(tuple(files[:len(take)]), tuple(take), read, layout, path,
                      scan.largest, len(scan.keys))
