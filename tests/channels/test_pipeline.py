"""convert(channels=...): the stage runs before the layer-wise solves, the report names
the sites, the refusals and the L2-norm baseline; config rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_obc import CompressConfig, convert
from onnx_obc.errors import ConfigError
from tests.channels import graphs

CNN = "models/digits_cnn.onnx"
CALIB = "models/digits_cnn.calib.npz"


def test_channels_alone_on_the_cnn(tmp_path):
    out = tmp_path / "c.onnx"
    r = convert(CNN, out, calib=CALIB, channels=0.3, progress=False)
    ch = r.report.channels
    assert ch["macs_pruned"] <= 0.72 * ch["macs_dense"]
    assert {x["producer"] for x in ch["refused"]} == {"stem", "block2", "down", "fc"}
    fid = r.report.fidelity["held-out calibration"]
    assert fid["compressed"].rel_error["logits"] < 0.5 * fid["channels-l2"].rel_error["logits"]
    assert out.stat().st_size < Path(CNN).stat().st_size
    assert "block1 -> block2" in r.report.table()


def test_channels_then_quantization():
    r = convert(graphs.transformer_mlp(), None, channels=0.3, bits=8, progress=False)
    assert r.report.channels["rows"][0]["removed"] > 0
    assert r.report.layers and all(x.bits == 8 for x in r.report.layers)
    assert {"compressed", "rtn", "channels-l2"} <= set(
        r.report.fidelity["held-out calibration"])


def test_config_rules():
    cfg = CompressConfig.from_options(channels=0.3)  # alone is enough to do something
    assert cfg.to_dict()["prune"]["channels"] == 0.3
    with pytest.raises(ConfigError, match="prune.channels"):
        CompressConfig.from_options(channels=1.5)
    with pytest.raises(ConfigError, match="prune.channels"):
        CompressConfig.from_options(sparsity=0.5, channel_align=8)
    with pytest.raises(ConfigError, match="prune.channels alone"):
        CompressConfig.from_options(channels=0.3, correct=True)
    with pytest.raises(ConfigError, match="channel_allocate"):
        CompressConfig.from_options(channels=0.3, channel_allocate="best")
    with pytest.raises(ConfigError, match="prune.channels"):
        CompressConfig.from_options(sparsity=0.5, channel_allocate="uniform")
    assert CompressConfig.from_options(channels=0.3, sequential=True).run.sequential


def test_channel_align_on_the_cnn():
    r = convert(CNN, None, calib=CALIB, channels=0.3, channel_align=8, progress=False)
    assert all((x["channels"] - x["removed"]) % 8 == 0 for x in r.report.channels["rows"])


def test_auto_align_keeps_multiples_of_8_where_the_dense_count_is_one():
    """The default (0): sites of 16+ channels in 8s stay in 8s; others take any count."""
    from onnx_obc.channels.allocate import site_align
    from onnx_obc.channels.patterns import Site

    site = Site.__new__(Site)
    for C, want in ((32, 8), (16, 8), (8, 1), (24, 8), (30, 1), (6, 1)):
        object.__setattr__(site, "channels", C)
        object.__setattr__(site, "split", None)
        assert site_align(site, 0) == want and site_align(site, 4) == 4
    object.__setattr__(site, "split", object())
    assert site_align(site, 8) == 1  # whole heads
    assert CompressConfig.from_options(channels=0.3).prune.channel_align == 0
    r = convert(CNN, None, calib=CALIB, channels=0.3, progress=False)
    for x in r.report.channels["rows"]:
        if x["channels"] % 8 == 0 and x["channels"] >= 16:
            assert (x["channels"] - x["removed"]) % 8 == 0


def test_channels_with_w8a8_for_onnxruntime():
    """--channels 0.3 --bits 8 --act-bits 8 --runtime onnxruntime: the shrunk model is
    quantized, its layers run on onnxruntime's integer kernels, the output stays close."""
    import numpy as np

    from tests import builders as b

    model = graphs.conv_bn_relu_conv(mid=16)
    r = convert(model, None, calib=[b.feeds(model, 128, seed=1)], channels=0.3, bits=8,
                act_bits=8, runtime="onnxruntime", progress=False,
                float_stem=False, float_highres=False)  # the producer reads the 3-channel
    # input, at stride 1: quantized too
    assert r.report.channels["rows"] and "stem" not in str(r.report.skipped)
    (row,) = r.report.channels["rows"]
    assert row["removed"] > 0
    shapes = [tuple(t.dims) for t in r.model.graph.initializer]
    kept = 16 - row["removed"]
    assert (5, kept, 3, 3) in shapes and (kept, 3, 3, 3) in shapes  # both layers shrank
    assert (5, 16, 3, 3) not in shapes
    f = r.report.fusion
    assert f["layers"] == 2 and f["kernels"] == {"QLinearConv": 1}  # the producer; the
    assert "graph output" in f["unfused"][0]["why"]  # consumer's output stays float
    feed = b.feeds(model, 16, seed=5)
    y, ref = b.run(r.model, feed)[0], b.run(model, feed)[0]
    fid = r.report.fidelity["held-out calibration"]
    assert fid["compressed"].rel_error["y"] < 0.5 * fid["channels-l2"].rel_error["y"]
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.5


def test_the_per_site_stages_show_progress(capsys):
    """Long work shows progress: the traces, the output probes and the latency timing each
    a bar (tqdm on stderr), none with progress off."""
    model = graphs.transformer_mlp()
    convert(model, None, channels=0.3, channel_budget="latency", progress=True)
    err = capsys.readouterr().err
    assert all(f"{d}:" in err for d in ("channel traces", "output probes", "latency timing"))
    convert(model, None, channels=0.3, progress=False)
    assert "channel traces" not in capsys.readouterr().err
