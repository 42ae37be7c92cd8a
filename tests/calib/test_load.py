"""calib.load_data from every accepted source, every bad input with a clear CalibrationError,
labels, the held-out split and synthetic inputs."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from onnx_obc.calib import DataSet, StreamSource, input_specs, load_data, synthesize
from onnx_obc.calib.plan import held_out_count
from onnx_obc.errors import CalibrationError

from .. import builders as b

MODEL = b.two_inputs()  # a [N, 4] f32, b [N, 3] f32, ids [N, 2] int64


def good(n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    return b.feeds(MODEL, n, seed)


def assert_same(ds, arrays: dict[str, np.ndarray]) -> None:
    """Every sample of one pass over any source equals `arrays` (axis 0 = samples)."""
    got = _all(ds)
    assert sorted(got) == sorted(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype


def bad(source, model=MODEL, match: str | None = None, **kw) -> str:
    with pytest.raises(CalibrationError, match=match) as exc:
        load_data(source, model, **kw)
    return str(exc.value)


# --------------------------------------------------------------------------- sources


def test_input_specs_skip_initializers_and_keep_symbols():
    specs = input_specs(b.weight_is_graph_input())
    assert [(s.name, s.shape) for s in specs] == [("x", ("N", 6))]
    specs = {s.name: s for s in input_specs(MODEL)}
    assert specs["ids"].dtype == np.int64 and specs["a"].dtype == np.float32


def test_npz_file(tmp_path):
    arrays = good(5)
    np.savez(tmp_path / "c.npz", **arrays)
    ds = load_data(tmp_path / "c.npz", MODEL)
    assert ds.n == 5 and not ds.synthetic and ds.labels is None
    assert ds.source == str(tmp_path / "c.npz")
    assert_same(ds, arrays)


def test_npz_float64_and_int32_are_cast_to_the_model_dtypes(tmp_path, caplog):
    arrays = good(4)
    np.savez(tmp_path / "c.npz", a=arrays["a"].astype(np.float64), b=arrays["b"],
             ids=arrays["ids"].astype(np.int32))
    with caplog.at_level(logging.INFO, logger="onnx_obc"):
        ds = load_data(str(tmp_path / "c.npz"), MODEL)
    assert ds.arrays["a"].dtype == np.float32 and ds.arrays["ids"].dtype == np.int64
    np.testing.assert_array_equal(ds.arrays["a"], arrays["a"])
    assert "casting input 'a'" in caplog.text


def test_directory_of_npz_one_sample_each_without_batch_axis(tmp_path):
    arrays = good(4)
    for i in [3, 0, 2, 1]:  # created out of order: loading sorts by name
        np.savez(tmp_path / f"s{i:02d}.npz", **{k: v[i] for k, v in arrays.items()})
    (tmp_path / "README.txt").write_text("not data")
    ds = load_data(tmp_path, MODEL)
    assert ds.n == 4
    assert_same(ds, arrays)


def test_directory_of_npz_with_batch_axis_kept(tmp_path):
    arrays = good(4)
    for i in range(4):
        np.savez(tmp_path / f"s{i}.npz", **{k: v[i:i + 1] for k, v in arrays.items()})
    assert_same(load_data(tmp_path, MODEL), arrays)


def test_directory_of_npy_for_a_single_input_model(tmp_path):
    model = b.matmul(6, 5, rank=3)
    x = b.feeds(model, 3)["x"]  # [3, 5, 6]
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", x[i])
    ds = load_data(str(tmp_path), model)
    assert _all(ds)["x"].shape == (3, 5, 6)
    np.testing.assert_array_equal(_all(ds)["x"], x)


def test_single_npy_file_for_a_single_input_model(tmp_path):
    model = b.matmul(6, 5)
    x = b.feeds(model, 4)["x"]
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(load_data(tmp_path / "x.npy", model).arrays["x"], x)


def test_arrays_in_memory_are_a_source_like_the_npz(tmp_path):
    """A dict {input_name: array} (what a user of convert() has in hand), numpy.load's
    NpzFile and, for a single-input model, one array: the .npz's own checks, casts,
    labels and limit (before, a dict was iterated as its keys: "the item at sample 0 is a
    str, not a feed dict")."""
    arrays = good(5)
    ds = load_data(arrays, MODEL)
    assert isinstance(ds, DataSet) and ds.n == 5 and ds.source == "dict"
    assert_same(ds, arrays)
    np.savez(tmp_path / "c.npz", **arrays, labels=np.arange(5))
    with np.load(tmp_path / "c.npz") as npz:
        ds = load_data(npz, MODEL, limit=3)
    assert ds.n == 3 and ds.labels.tolist() == [0, 1, 2]
    assert_same(ds, {k: v[:3] for k, v in arrays.items()})
    cast = load_data({**arrays, "a": arrays["a"].astype(np.float64)}, MODEL)
    assert _all(cast)["a"].dtype == np.float32
    single = b.matmul(6, 5)
    x = b.feeds(single, 4)["x"]
    np.testing.assert_array_equal(load_data(x, single).arrays["x"], x)
    assert "single array but the model has 3 inputs" in bad(arrays["a"])
    assert "input 'a' contains NaN or inf" in bad({**arrays, "a": arrays["a"] * np.nan})
    assert "missing ['ids']" in bad({k: v for k, v in arrays.items() if k != "ids"})
    assert "its values are not arrays" in bad({**arrays, "b": [np.zeros(3), np.zeros(2)]})


def _all(source) -> dict[str, np.ndarray]:
    """Every sample of one pass over `source`, concatenated."""
    feeds = [f for _, f in source.batches(5)]
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def test_iterable_of_feed_dicts_is_streamed_in_order():
    parts = [good(2, seed=s) for s in range(3)]
    ds = load_data(parts, MODEL)
    assert isinstance(ds, StreamSource) and ds.n == 6
    for k in parts[0]:
        np.testing.assert_array_equal(_all(ds)[k], np.concatenate([p[k] for p in parts]))
    assert ds.source == "list"


def test_generator_of_feed_dicts():
    ds = load_data((good(2, seed=s) for s in range(2)), MODEL)
    assert ds.n == 4


class GetNextOnly:
    """Only get_next(): returns feed dicts, then None (like a CalibrationDataReader)."""

    def __init__(self, parts):
        self.parts = list(parts)

    def get_next(self):
        return self.parts.pop(0) if self.parts else None


def test_object_with_only_get_next():
    parts = [good(2, seed=s) for s in range(3)]
    ds = load_data(GetNextOnly(parts), MODEL)
    assert ds.n == 6
    np.testing.assert_array_equal(_all(ds)["b"], np.concatenate([p["b"] for p in parts]))


def _ort_reader(with_len: bool):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self, parts):
            self.parts = list(parts)

        def get_next(self):
            return self.parts.pop(0) if self.parts else None

    if with_len:
        Reader.__len__ = lambda self: len(self.parts)
    return Reader


def test_onnxruntime_calibration_data_reader_with_len():
    parts = [good(3, seed=s) for s in range(2)]
    ds = load_data(_ort_reader(with_len=True)(parts), MODEL)
    assert ds.n == 6
    np.testing.assert_array_equal(_all(ds)["a"], np.concatenate([p["a"] for p in parts]))


def test_onnxruntime_calibration_data_reader_plain():
    parts = [good(3, seed=s) for s in range(2)]
    ds = load_data(_ort_reader(with_len=False)(parts), MODEL)
    assert ds.n == 6
    np.testing.assert_array_equal(_all(ds)["a"], np.concatenate([p["a"] for p in parts]))


def test_limit_takes_the_first_samples(tmp_path):
    arrays = good(6)
    np.savez(tmp_path / "c.npz", **arrays)
    ds = load_data(tmp_path / "c.npz", MODEL, limit=4)
    assert_same(ds, {k: v[:4] for k, v in arrays.items()})


# --------------------------------------------------------------------------- labels


def test_labels_key_is_kept_in_labels(tmp_path):
    arrays = good(5)
    labels = np.arange(5) % 3
    np.savez(tmp_path / "e.npz", labels=labels, **arrays)
    ds = load_data(tmp_path / "e.npz", MODEL)
    assert "labels" not in ds.arrays
    np.testing.assert_array_equal(ds.labels, labels)
    assert load_data(tmp_path / "e.npz", MODEL, allow_labels=False).labels is None
    np.testing.assert_array_equal(load_data(tmp_path / "e.npz", MODEL, limit=2).labels,
                                  labels[:2])


def test_labels_with_the_wrong_count(tmp_path):
    np.savez(tmp_path / "e.npz", labels=np.arange(3), **good(5))
    bad(tmp_path / "e.npz", match="'labels' has 3 entries for 5 samples")


# --------------------------------------------------------------------------- errors


def test_missing_key(tmp_path):
    arrays = good(3)
    del arrays["b"]
    np.savez(tmp_path / "c.npz", **arrays)
    msg = bad(tmp_path / "c.npz")
    assert "missing ['b']" in msg and "Name each array after the model input" in msg


def test_extra_key_is_ignored_with_a_warning(tmp_path, caplog):
    """Every input there plus side data (an eval set's texts or boxes): the side data is
    ignored, and the run says so; with an input missing the extra names are in the error."""
    arrays = good(3)
    np.savez(tmp_path / "c.npz", texts=np.array(["ab", "c", "d"]), **arrays)
    with caplog.at_level("WARNING"):
        ds = load_data(tmp_path / "c.npz", MODEL)
    assert_same(ds, arrays)
    assert "['texts'] name no model input" in caplog.text
    del arrays["b"]
    np.savez(tmp_path / "d.npz", texts=np.array(["ab", "c", "d"]), **arrays)
    msg = bad(tmp_path / "d.npz")
    assert "missing ['b'], unexpected ['texts']" in msg


def test_extra_key_from_an_iterable(caplog):
    arrays = good(2)
    with caplog.at_level("WARNING"):
        ds = load_data([{**arrays, "z": np.zeros((2, 1))}], MODEL)
    assert_same(ds, arrays)
    assert "['z'] name no model input" in caplog.text


def test_wrong_rank_one_short_hints_at_the_sample_axis(tmp_path):
    arrays = good(3)
    arrays["a"] = arrays["a"][0]  # [4]: the sample axis is missing
    np.savez(tmp_path / "c.npz", **arrays)
    msg = bad(tmp_path / "c.npz")
    assert "input 'a' has shape (4,)" in msg and "expects rank 2" in msg
    assert "Add a sample axis" in msg


def test_wrong_rank_too_many_axes_has_no_sample_axis_hint():
    arrays = good(3)
    arrays["a"] = arrays["a"][:, :, None]
    msg = bad([arrays])
    assert "expects rank 2 [N, 4]" in msg
    assert "Add a sample axis" not in msg


def test_wrong_fixed_dim():
    arrays = good(3)
    arrays["b"] = np.zeros((3, 5), np.float32)
    msg = bad([arrays])
    assert "input 'b' has shape (3, 5)" in msg and "axis 1 must be 3" in msg


def test_float_data_for_an_int_input():
    arrays = good(3)
    arrays["ids"] = arrays["ids"].astype(np.float32)
    msg = bad([arrays])
    assert "'ids' is float32 but the model expects int64" in msg and "astype" in msg


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_values(value):
    arrays = good(3)
    arrays["a"][1, 2] = value
    assert "input 'a' contains NaN or inf" in bad([arrays])


def test_different_sample_counts():
    arrays = good(3)
    arrays["b"] = good(4)["b"]
    assert "different sample counts" in bad([arrays])


def test_zero_samples():
    arrays = {k: v[:0] for k, v in good(3).items()}
    assert "no samples" in bad([arrays])


def test_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    assert "has no .npz or .npy files" in bad(tmp_path)


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "nope.npz"
    msg = bad(missing)
    assert "does not exist" in msg and "nope.npz" in msg


def test_unreadable_file(tmp_path):
    p = tmp_path / "c.npz"
    p.write_bytes(b"this is not numpy data\n" * 4)
    msg = bad(p)
    assert "cannot read calibration data" in msg and "numpy.savez" in msg


def test_truncated_npz(tmp_path):
    np.savez(tmp_path / "full.npz", **good(3))
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "c.npz").write_bytes(data[: len(data) // 2])
    assert "cannot read calibration data" in bad(tmp_path / "c.npz")


def test_npz_with_an_object_array_is_a_calibration_error(tmp_path):
    arrays = good(3)
    arrays["a"] = np.array([np.zeros(4), np.zeros(3)], dtype=object)
    np.savez(tmp_path / "c.npz", **arrays)
    assert "c.npz" in bad(tmp_path / "c.npz")  # names the file


def test_npy_directory_for_a_multi_input_model(tmp_path):
    np.save(tmp_path / "0.npy", np.zeros(4, np.float32))
    msg = bad(tmp_path)
    assert "single array but the model has 3 inputs" in msg


def test_iterable_items_with_different_keys():
    first, second = good(2), good(2)
    del second["ids"]
    msg = bad([first, second])
    assert "item starting at sample 2" in msg and "missing ['ids']" in msg
    msg = bad(iter([first, second]))  # a one-shot iterator is read into memory first
    assert "item starting at sample 2" in msg and "missing ['ids']" in msg


@pytest.mark.parametrize("source", [[], [1, 2], ["a"]])
def test_iterable_without_dicts(source):
    assert re.search("yielded no samples|not a feed dict", bad(source))
    assert re.search("yielded no samples|not a feed dict", bad(iter(source)))


def test_object_that_is_not_a_source():
    msg = bad(42)
    assert "not a path, a dict {input_name: array}, an iterable of feed dicts, or a " \
        "CalibrationDataReader" in msg


# --------------------------------------------------------------------------- split


class CountingIterable:
    """A re-iterable that counts its passes and never holds more than one item out."""

    def __init__(self, parts):
        self.parts, self.passes = parts, 0

    def __iter__(self):
        self.passes += 1
        return iter(list(self.parts))


def test_a_reiterable_is_read_one_item_at_a_time_and_never_materialised():
    parts = [good(3, seed=s) for s in range(4)]
    src = CountingIterable(parts)
    ds = load_data(src, MODEL)
    assert src.passes == 1 and ds.n == 12  # one checking / counting pass
    got = list(ds.batches(5))  # re-batched across the items' boundaries
    assert [k for k, _ in got] == [5, 5, 2] and src.passes == 2
    np.testing.assert_array_equal(np.concatenate([f["a"] for _, f in got]),
                                  np.concatenate([p["a"] for p in parts]))


def test_stream_split_is_taken_by_count_from_the_start():
    parts = [good(3, seed=s) for s in range(4)]
    fit, held = load_data(parts, MODEL).split(4, seed=0)
    allx = np.concatenate([p["a"] for p in parts])
    assert (fit.n, held.n) == (8, 4)
    np.testing.assert_array_equal(_all(held)["a"], allx[:4])
    np.testing.assert_array_equal(_all(fit)["a"], allx[4:])
    np.testing.assert_array_equal(_all(fit.head(3))["a"], allx[4:7])


def test_stream_limit_and_a_bad_item_named_by_its_first_sample():
    parts = [good(3, seed=s) for s in range(3)]
    assert load_data(parts, MODEL, limit=4).n == 4
    bad = parts[:2] + [{"a": parts[0]["a"]}]
    with pytest.raises(CalibrationError, match="item starting at sample 6"):
        load_data(bad, MODEL)


class Rewindable:
    """A CalibrationDataReader-style reader with rewind(): streamed, not materialised."""

    def __init__(self, parts):
        self.parts, self.i = parts, 0

    def get_next(self):
        self.i += 1
        return self.parts[self.i - 1] if self.i <= len(self.parts) else None

    def rewind(self):
        self.i = 0


def test_a_reader_with_rewind_is_streamed():
    parts = [good(2, seed=s) for s in range(3)]
    ds = load_data(Rewindable(parts), MODEL)
    assert isinstance(ds, StreamSource) and ds.n == 6
    np.testing.assert_array_equal(_all(ds)["b"], np.concatenate([p["b"] for p in parts]))
    np.testing.assert_array_equal(_all(ds)["b"], np.concatenate([p["b"] for p in parts]))


def test_held_out_count():
    assert held_out_count(20, 0.25) == 5
    assert held_out_count(3, 0.0) == 0 and held_out_count(3, 0.1) == 0  # round(0.3) = 0
    assert held_out_count(1000, 0.5) == 256 and held_out_count(1, 0.9) == 0


def _ds(n: int) -> DataSet:
    arrays = good(n)
    return DataSet(arrays, "t", labels=np.arange(n))


def test_split_is_disjoint_complete_and_deterministic():
    ds = _ds(20)
    fit, held = ds.split(5, seed=7)
    assert (fit.n, held.n) == (15, 5)
    fit_ids, held_ids = set(fit.labels.tolist()), set(held.labels.tolist())
    assert not fit_ids & held_ids and fit_ids | held_ids == set(range(20))
    # samples travel with their labels
    np.testing.assert_array_equal(held.arrays["a"], ds.arrays["a"][held.labels])
    fit2, held2 = ds.split(5, seed=7)
    np.testing.assert_array_equal(held2.labels, held.labels)
    np.testing.assert_array_equal(fit2.arrays["b"], fit.arrays["b"])
    others = [tuple(ds.split(5, seed=s)[1].labels) for s in range(8, 12)]
    assert any(o != tuple(held.labels) for o in others)  # the seed matters


def test_batches_cover_all_samples_in_order():
    ds = _ds(7)
    got = list(ds.batches(3))
    assert [s for s, _ in got] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([f["a"] for _, f in got]), ds.arrays["a"])


# --------------------------------------------------------------------------- synthesize


def test_synthesize_fixed_shapes():
    ds = synthesize(MODEL, 6, seed=1)
    assert ds.synthetic and ds.n == 6 and "synthetic" in ds.source
    assert ds.arrays["a"].shape == (6, 4) and ds.arrays["a"].dtype == np.float32
    assert ds.arrays["b"].shape == (6, 3)
    assert ds.arrays["ids"].shape == (6, 2) and ds.arrays["ids"].dtype == np.int64
    assert ds.arrays["a"].std() > 0.5  # random, not zeros
    again = synthesize(MODEL, 6, seed=1)
    np.testing.assert_array_equal(again.arrays["a"], ds.arrays["a"])
    assert not np.array_equal(synthesize(MODEL, 6, seed=2).arrays["a"], ds.arrays["a"])


def test_synthesize_default_sample_count():
    assert synthesize(b.matmul(6, 5, rank=4), None, 0).arrays["x"].shape == (64, 2, 3, 6)


def test_synthesize_refuses_symbolic_non_batch_dims():
    with pytest.raises(CalibrationError, match=re.escape("axis 1 is symbolic ('T')")) as exc:
        synthesize(b.symbolic_feature(), 4, 0)
    assert "--calib" in str(exc.value)


# --------------------------------------------------------------------------- safety


def test_nan_or_inf_names_the_input_and_the_samples():
    arrays = good(30)
    arrays["b"][[4, 17], 1] = [np.nan, -np.inf]
    msg = bad([arrays])
    assert "input 'b' contains NaN or inf in sample(s) 4, 17 (2 of 30, counting from 0)" in msg
    arrays["b"][:] = np.nan
    assert "sample(s) 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (30 of 30" in bad([arrays])


@pytest.mark.parametrize("content", [b"1.0 2.0 3.0\n", b"a,b\n1,2\n", b""])
def test_a_text_file_is_not_an_npz_and_the_formats_are_named(tmp_path, content):
    p = tmp_path / "calib.txt"
    p.write_bytes(content)
    msg = bad(p)
    assert "not an .npz/.npy file" in msg and "numpy.savez" in msg and ".npy" in msg
    assert "pickle" not in msg
