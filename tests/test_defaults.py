"""The default allocation: `--sparsity S` alone is the exact DP over the weight budget
(alloc.mode "auto" resolves to "dp"); `--allocate uniform` keeps every layer at S; the
settings the DP cannot take (N:M, blocks, the magnitude baseline, no sparsity) and the
fast path (gptq: the DP's ExactOBS tables would cost more than its solve) stay uniform; the
resolution follows the options through replace() and recipes. quant.reduce_range "auto":
7-bit codes for W8A8 on onnxruntime where this CPU saturates its uint8 x int8 kernels."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import onnx

from onnx_obc import convert, cpu
from onnx_obc.cli import main
from onnx_obc.config import CompressConfig

from . import builders as b


@pytest.mark.parametrize("options, mode", [
    ({"sparsity": 0.5}, "dp"),
    ({"sparsity": 0.5, "bits": 8}, "dp"),
    ({"sparsity": 0.5, "method": "gptq"}, "uniform"),  # the DP's tables are ExactOBS
    ({"sparsity": 0.5, "method": "gptq", "allocate": "dp"}, "dp"),
    ({"sparsity": 0.5, "allocate": "uniform"}, "uniform"),
    ({"sparsity": 0.5, "method": "magnitude"}, "uniform"),
    ({"sparsity": 0.5, "block": 4}, "uniform"),
    ({"nm": (2, 4)}, "uniform"),
    ({"bits": 4}, "uniform"),
    ({"sparsity": 0.97, "max_sparsity": 0.99}, "dp"),
    ({"sparsity": 0.97}, "uniform"),  # above the DP's largest level (alloc.max_sparsity)
])
def test_auto_resolves_to_the_dp_for_a_global_unstructured_sparsity(options, mode):
    assert CompressConfig.from_options(**options).alloc.mode == mode


def test_replace_and_recipes_resolve_the_default_again():
    cfg = CompressConfig.from_options(sparsity=0.5)
    assert cfg.replace(sparsity=None, bits=4).alloc.mode == "uniform"  # no DP error
    assert cfg.replace(nm=(2, 4), sparsity=None).alloc.mode == "uniform"
    assert CompressConfig.from_options(bits=4).replace(sparsity=0.5).alloc.mode == "dp"
    assert CompressConfig.from_dict({"prune": {"sparsity": 0.5}}).alloc.mode == "dp"
    assert CompressConfig.from_dict(cfg.to_dict()).alloc.mode == "dp"  # a report's recipe
    explicit = CompressConfig.from_options(sparsity=0.5, allocate="uniform")
    assert explicit.replace(bits=8).alloc.mode == "uniform"


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    model = b.mlp((16, 24, 8))
    rng = np.random.default_rng(0)
    z = rng.normal(size=(96, 4)).astype(np.float32)  # correlated inputs: layers differ
    x = np.concatenate([z, z @ rng.normal(size=(4, 12)).astype(np.float32)], 1)
    path = tmp_path_factory.mktemp("d") / "calib.npz"
    name = model.graph.input[0].name
    np.savez(path, **{name: x})
    return model, str(path)


def test_the_default_sparsity_is_the_dp_and_meets_the_global_budget(model_and_data):
    model, calib = model_and_data
    r = convert(model, calib=calib, sparsity=0.5, progress=False, holdout=0.0)
    layers = r.report.layers
    weights = sum(x.rows * x.cols * x.groups for x in layers)
    zeros = sum(x.sparsity * x.rows * x.cols * x.groups for x in layers)
    assert r.report.config["alloc"]["mode"] == "dp" and r.report.profile
    assert zeros / weights >= 0.5 - 1e-9  # the budget: at most half the weights kept
    assert len({round(x.sparsity, 3) for x in layers}) > 1  # levels differ per layer
    u = convert(model, calib=calib, sparsity=0.5, allocate="uniform", progress=False,
                holdout=0.0)
    assert all(abs(x.sparsity - 0.5) < 0.02 for x in u.report.layers)
    assert not u.report.profile


def test_the_cli_default_and_allocate_uniform(model_and_data, tmp_path):
    model, calib = model_and_data
    src = tmp_path / "m.onnx"
    src.write_bytes(model.SerializeToString())
    for extra, mode in (([], "dp"), (["--allocate", "uniform"], "uniform")):
        rep = tmp_path / f"{mode}.json"
        res = CliRunner().invoke(main, [str(src), str(tmp_path / "o.onnx"), "--sparsity", "0.5",
                                        "--calib", calib, "--report", str(rep), "-q", *extra])
        assert res.exit_code == 0, res.output
        assert f'"mode": "{mode}"' in rep.read_text()


W8A8_ORT = {"bits": 8, "act_bits": 8, "runtime": "onnxruntime"}


@pytest.mark.parametrize("saturates, options, on", [
    (True, W8A8_ORT, True),
    (False, W8A8_ORT, False),
    (True, {**W8A8_ORT, "runtime": "tensorrt"}, False),  # TensorRT's int8 does not saturate
    (True, {"bits": 8, "runtime": "onnxruntime"}, False),  # no uint8 activations
    (True, {**W8A8_ORT, "bits": 4, "runtime": "tensorrt"}, False),
    (True, {**W8A8_ORT, "bits": 7}, False),
    (True, {**W8A8_ORT, "reduce_range": "off"}, False),
    (False, {"bits": 8, "reduce_range": "on"}, True),
])
def test_reduce_range_auto_follows_the_converting_cpu(monkeypatch, saturates, options, on):
    monkeypatch.setattr(cpu, "saturating_cpu", lambda: saturates)
    cfg = CompressConfig.from_options(**options)
    assert cfg.quant.reduce_range == ("on" if on else "off")
    spec = cfg.quant.spec()
    assert spec.bits == options["bits"] and spec.qmax == (63 if on else 2 ** (spec.bits - 1) - 1)
    assert cfg.replace(runtime="tensorrt").quant.reduce_range == (  # resolved again
        "on" if options.get("reduce_range") == "on" else "off")


def _codes(model: onnx.ModelProto) -> np.ndarray:
    return np.concatenate([onnx.numpy_helper.to_array(t).ravel() for t in
                           model.graph.initializer if t.data_type == onnx.TensorProto.INT8])


def test_reduced_range_writes_7_bit_codes_and_says_why(model_and_data, monkeypatch):
    """On a (patched) saturating CPU the default W8A8 for onnxruntime writes every weight code
    in [-63, 63], on the 8-bit paths, and the report says why and how to turn it off;
    --reduce-range off writes the full 8-bit codes."""
    model, calib = model_and_data
    monkeypatch.setattr(cpu, "saturating_cpu", lambda: True)
    r = convert(model, calib=calib, progress=False, holdout=0.0, **W8A8_ORT)
    codes = _codes(r.model)
    assert codes.size and codes.min() >= -63 and codes.max() <= 63
    assert {x.bits for x in r.report.layers} == {8}
    assert {x.method_used for x in r.report.layers} <= {"gptq+act-order/H-grid", "rtn/H-grid"}
    assert r.report.config["quant"]["reduce_range"] == "on"
    line = [x for x in r.report.decisions() if x.startswith("reduce range on")]
    assert line and "--reduce-range off" in line[0] and line[0] in r.report.table()
    off = convert(model, calib=calib, progress=False, holdout=0.0, reduce_range="off",
                  **W8A8_ORT)
    assert np.abs(_codes(off.model).astype(int)).max() > 64
    assert not any(x.startswith("reduce range") for x in off.report.decisions())
