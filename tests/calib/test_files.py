"""Files read lazily: memory-mapped .npz/.npy (compressed ones in memory, said so), a
directory read one file at a time with the old seeded split, and image directories with a
preprocessing spec or a user function, from the API and the CLI."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from onnx_obc.calib import DataSet, FileSource, load_data, plan
from onnx_obc.calib.images import Preprocess
from onnx_obc.cli import main
from onnx_obc.config import RunOptions
from onnx_obc.errors import CalibrationError, ConfigError

from . import models
from .. import builders as b

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _all(src) -> dict[str, np.ndarray]:
    feeds = [f for _, f in src.batches(7)]
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def test_an_uncompressed_npz_is_memory_mapped_and_split_as_before(tmp_path):
    model = b.matmul(6, 5, rank=3)
    x = b.feeds(model, 9000)["x"]  # [9000, 5, 6] float32, 1 MB: mapped
    np.savez(tmp_path / "c.npz", x=x)
    ds = load_data(tmp_path / "c.npz", model)
    assert isinstance(ds, DataSet) and ds.mapped and ds.read_as == "memory-mapped"
    fit, held = ds.split(256, seed=3)
    mem_fit, mem_held = DataSet({"x": x}, "m").split(256, seed=3)
    assert fit.rows is not None  # lazy: nothing read yet
    for a, m in ((fit, mem_fit), (held, mem_held)):
        got = list(a.batches(100))
        assert not any(isinstance(f["x"], np.memmap) for _, f in got)
        np.testing.assert_array_equal(np.concatenate([f["x"] for _, f in got]), m.arrays["x"])
    np.testing.assert_array_equal(_all(load_data(tmp_path / "c.npz", model, limit=10))["x"],
                                  x[:10])


def test_a_compressed_npz_is_read_into_memory_and_says_so(tmp_path, caplog):
    model = b.matmul(6, 5, rank=3)
    x = b.feeds(model, 9000)["x"]
    np.savez_compressed(tmp_path / "c.npz", x=x)
    ds = load_data(tmp_path / "c.npz", model)
    assert not ds.mapped and "compressed .npz cannot be memory-mapped" in ds.read_as
    np.testing.assert_array_equal(_all(ds)["x"], x)
    assert "numpy.savez" in caplog.text


def test_a_directory_is_read_one_file_at_a_time_with_the_old_split(tmp_path):
    model = b.mlp()
    x = b.feeds(model, 40)["x"]
    for i in range(40):
        np.save(tmp_path / f"{i:03d}.npy", x[i])
    ds = load_data(tmp_path, model)
    assert isinstance(ds, FileSource) and ds.n == 40
    reads = []
    read = ds.read
    object.__setattr__(ds, "read", lambda f: reads.append(f) or read(f))
    first = next(ds.batches(8))
    assert first[0] == 8 and len(reads) == 8  # the first batch read 8 files, not 40
    fit, held = ds.split(10, seed=5)  # one sample per file: DataSet.split's samples
    mem_fit, mem_held = DataSet({"x": x}, "m").split(10, seed=5)
    np.testing.assert_array_equal(_all(held)["x"], mem_held.arrays["x"])
    np.testing.assert_array_equal(_all(fit)["x"], mem_fit.arrays["x"])
    assert load_data(tmp_path, model, limit=5).paths == ds.paths[:5]


def test_a_directory_of_samples_of_different_lengths(tmp_path):
    model = b.symbolic_feature()  # x [N, T, 4]
    for i, t in enumerate([2, 3, 2, 5, 3]):
        np.save(tmp_path / f"{i}.npy", np.full((t, 4), i, np.float32))
    ds = load_data(tmp_path, model)
    assert ds.n == 5 and ds.shapes == 3
    got = sorted((f["x"].shape, f["x"][:, 0, 0].tolist()) for _, f in ds.batches(4))
    assert got == [((1, 5, 4), [3.0]), ((2, 2, 4), [0.0, 2.0]), ((2, 3, 4), [1.0, 4.0])]


def _images(path, sizes, seed=0):
    rng = np.random.default_rng(seed)
    path.mkdir(exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            path / f"img{i}.png")


def test_preprocess_spec_parsing():
    p = Preprocess.parse("resize=32,crop=24x20,mean=0.5:0.4:0.3,std=0.2,layout=nhwc,color=bgr")
    assert (p.resize, p.crop, p.mean, p.std, p.layout, p.color) == (
        (32,), (24, 20), (0.5, 0.4, 0.3), (0.2,), "nhwc", "bgr")
    assert Preprocess.parse("mypkg.prep:load").function == "mypkg.prep:load"
    for bad in ("resize=big", "size=3", "layout=chw", "std=0", "just words"):
        with pytest.raises(ValueError):
            Preprocess.parse(bad)
    with pytest.raises(ConfigError, match="run.calib_preprocess"):
        RunOptions(calib_preprocess="resize=big")


def test_images_resized_normalised_and_laid_out_like_by_hand(tmp_path):
    _images(tmp_path / "im", [(30, 40), (50, 20)])
    model = b.conv(c_in=3, c_out=4, spatial=16)  # x [N, 3, 16, 16]
    ds = load_data(tmp_path / "im", model, preprocess=f"resize=16x16,mean={':'.join(map(str, MEAN))},"
                   f"std={':'.join(map(str, STD))}")
    x = _all(ds)["x"]
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32
    im = Image.open(tmp_path / "im" / "img0.png").convert("RGB").resize((16, 16),
                                                                        Image.BILINEAR)
    want = ((np.asarray(im, np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(x[0], want, rtol=1e-5, atol=1e-5)
    nhwc = load_data(tmp_path / "im", _nhwc(model), preprocess="resize=16x16")
    np.testing.assert_allclose(_all(nhwc)["x"][1],
                               np.asarray(Image.open(tmp_path / "im" / "img1.png").convert(
                                   "RGB").resize((16, 16), Image.BILINEAR)) / 255, atol=1e-6)


def _nhwc(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_value, dims[3].dim_value = 16, 3
    return m


def test_images_of_three_sizes_keep_their_sizes_on_a_dynamic_model(tmp_path):
    _images(tmp_path, [(20, 20), (24, 32), (20, 20), (17, 21)])
    ds = load_data(tmp_path, models.dynamic_cnn())  # no spec: layout and color from the model
    assert ds.n == 4 and ds.shapes == 3
    shapes = sorted(f["x"].shape for _, f in ds.batches(8))
    assert shapes == [(1, 3, 17, 21), (1, 3, 24, 32), (2, 3, 20, 20)]


def test_a_user_function_reads_every_file(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"{i}.txt").write_text(" ".join(str(i + k) for k in range(6)))
    (tmp_path / "myprep.py").write_text(
        "import numpy as np\n"
        "def load(path):\n"
        "    return np.loadtxt(path, dtype=np.float32)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "myprep", raising=False)
    for ref in ("myprep:load", str(tmp_path / "myprep.py") + ":load"):
        ds = load_data(tmp_path / "data", b.mlp((6, 4, 2)), preprocess=ref)
        np.testing.assert_array_equal(_all(ds)["x"][:, 0], [0, 1, 2])
    with pytest.raises(CalibrationError, match="no function 'nope'"):
        load_data(tmp_path / "data", b.mlp((6, 4, 2)), preprocess="myprep:nope")
    with pytest.raises(CalibrationError, match="cannot import"):
        load_data(tmp_path / "data", b.mlp((6, 4, 2)), preprocess="no_such_mod:f")


def test_images_for_a_model_that_is_not_an_image_model(tmp_path):
    _images(tmp_path, [(8, 8)])
    with pytest.raises(CalibrationError, match="one input of rank 4"):
        load_data(tmp_path, b.mlp())
    np.save(tmp_path / "x.npy", np.zeros(8, np.float32))  # a stray image is a file too
    with pytest.raises(CalibrationError, match="img0.png"):
        load_data(tmp_path, b.mlp())


def test_cli_image_directory_with_a_preprocessing_spec(tmp_path):
    _images(tmp_path / "imgs", [(40, 30), (20, 28), (33, 33)] * 4)
    onnx.save(models.dynamic_cnn(), tmp_path / "m.onnx")
    r = CliRunner().invoke(main, [
        "compress", str(tmp_path / "m.onnx"), str(tmp_path / "o.onnx"), "--sparsity", "0.5",
        "--calib", str(tmp_path / "imgs"), "--calib-preprocess",
        "resize=24,mean=0.485:0.456:0.406,std=0.229:0.224:0.225,layout=nchw", "-q",
        "--batch-size", "4", "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    import json
    cal = json.loads((tmp_path / "r.json").read_text())["calibration"]
    assert cal["total"] == 12 and cal["shapes"] == 3 and cal["read"].startswith("one file")
    r = CliRunner().invoke(main, ["compress", str(tmp_path / "m.onnx"), str(tmp_path / "p.onnx"),
                                  "--calib", str(tmp_path / "imgs"), "--calib-preprocess",
                                  "resize=huge"])
    assert r.exit_code == 2 and "--calib-preprocess" in r.output


def test_plan_on_a_directory_reports_how_it_reads(tmp_path):
    _images(tmp_path, [(16, 16)] * 10)
    p = plan(models.dynamic_cnn(), tmp_path, None, RunOptions(holdout=0.2))
    assert (p.fit.n, p.held.n) == (8, 2) and p.info["read"] == "one file at a time (10 files)"


def test_a_mapped_float64_npz_is_cast_batch_by_batch(tmp_path):
    model = b.matmul(6, 5, rank=3)
    x = b.feeds(model, 5000)["x"].astype(np.float64)  # 1.2 MB: mapped
    np.savez(tmp_path / "c.npz", x=x)
    ds = load_data(tmp_path / "c.npz", model)
    assert ds.mapped and ds.arrays["x"].dtype == np.float64  # not converted as a whole
    got = _all(ds)["x"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_mapped_samples_picked_by_index_from_a_misaligned_member_equal_the_array(tmp_path):
    """An .npz member's data starts wherever its zip header ends (here not 4-byte aligned:
    np.take copied such a float32 memmap at tens of MB/s); rows picked by index, on the
    sample axis 0 and on another axis, equal the in-memory array's, as plain contiguous
    arrays."""
    from onnx_obc.calib.files import _npz_mapped

    x = np.random.default_rng(0).normal(size=(40, 3, 50, 60)).astype(np.float32)  # mapped
    np.savez(tmp_path / "a.npz", image=x)
    mapped = _npz_mapped(str(tmp_path / "a.npz"))["image"]
    assert isinstance(mapped, np.memmap) and mapped.offset % 4  # the case that was slow
    xt = x.transpose(1, 0, 2, 3).copy()  # samples on axis 1
    other = np.memmap(tmp_path / "t.bin", np.float32, "w+", 2, xt.shape)  # misaligned too
    other[:] = xt
    idx = np.array([31, 2, 17])
    for src, ax, arr in ((mapped, 0, x), (other, 1, xt)):
        ds = DataSet({"image": src}, "m", axes={"image": ax})
        assert ds.mapped
        feeds = [f for _, f in ds.take(idx).batches(2)]
        assert not any(isinstance(f["image"], np.memmap) for f in feeds)
        assert all(f["image"].flags["C_CONTIGUOUS"] for f in feeds)
        np.testing.assert_array_equal(np.concatenate([f["image"] for f in feeds], axis=ax),
                                      np.take(arr, idx, axis=ax))
