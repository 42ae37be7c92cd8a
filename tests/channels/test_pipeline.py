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
