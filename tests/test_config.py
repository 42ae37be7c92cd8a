"""The composed configuration: each spec validates itself without mutation, cross-spec rules
name the Python fields (the CLI rewrites them into flags), to_dict/from_dict round-trip and
unknown keys are refused, recipes load from files."""

from __future__ import annotations

import dataclasses
import json

import pytest

from onnx_obc.config import (FLAT, Allocation, CompressConfig, Correction, Pruning,
                             Quantization, RunOptions, Selection)
from onnx_obc.errors import ConfigError
from onnx_obc.flags import flags_in, load_recipe


@pytest.mark.parametrize("kw, match, flag", [
    (dict(allocate="dp", budget="bops"), "add alloc.target", "add --target"),
    (dict(budget="bops", target=32), "add alloc.mode dp", "add --allocate dp"),
    (dict(allocate="dp", budget="bops", target=32, bits=8), "drop prune.sparsity, quant.bits",
     "drop --sparsity, --bits"),
    (dict(allocate="dp", budget="bops", target=32, sparsity=0.5), "drop prune.sparsity",
     "drop --sparsity"),
    (dict(allocate="dp", budget="bops", target=32, method="gptq"), "drop solver.method",
     "drop --method"),
    (dict(allocate="dp", budget="bops", target=0.5), "reduction factor >= 1", "--target is"),
    (dict(allocate="dp", budget="bops", target=8, level_bits=(8, 8)), "distinct",
     "--level-bits"),
    (dict(allocate="dp", budget="bops", target=8, level_bits=(9,)), "from 2 to 8",
     "--level-bits"),
    (dict(allocate="dp", budget="bops", target=8, level_nm=(4, 2)), "0 < N < M", "--level-nm"),
    (dict(allocate="dp", sparsity=0.5, target=2.0, budget="flops"), "once", "--sparsity or"),
    (dict(allocate="dp", budget="sparsity", target=2.0), "alloc.budget sparsity give "
     "prune.sparsity", "--budget sparsity give --sparsity"),
    (dict(allocate="dp"), "add prune.sparsity", "add --sparsity"),
    (dict(allocate="dp", budget="fast"), "alloc.budget must be", "--budget must be"),
    (dict(nm=(2, 4), allocate="dp"), "alloc.budget bops", "--budget bops"),
    (dict(nm=(2, 4), sparsity=0.5), "drop prune.sparsity", "drop --sparsity"),
    (dict(block=4), "add prune.sparsity", "add --sparsity"),
    (dict(sparsity=0.5, group_size=64), "add quant.bits", "add --bits"),
    (dict(bits=1), "quant.bits must be", "--bits must be"),
    (dict(bits=4, refine="yes"), "quant.refine must be", "--refine must be"),
    (dict(bits=8, act_bits=8, act_calibration="entropy"), "'percentile', 'mse', got",
     "--act-calibration must be"),
    (dict(), "nothing to do", "--sparsity 0.5), an N:M pattern (--nm 2:4), a FLOP cut by "
     "channels (--channels 0.3) and/or weight bits (--bits 8)"),
    (dict(bits=4, reduce_range="on"), "needs quant.bits 8", "needs --bits 8"),
    (dict(bits=8, reduce_range="yes"), "quant.reduce_range must be", "--reduce-range must be"),
    # no onnxruntime integer kernel takes these weights: the activations would stay float
    (dict(bits=4, act_bits=8, runtime="onnxruntime"), "4-bit weights run in float",
     "drop --act-bits"),
    (dict(bits=8, act_bits=8, runtime="onnxruntime", symmetric=False),
     "8-bit asymmetric weights run in float", "--runtime tensorrt"),
])
def test_bad_options_name_the_field_and_the_flag(kw, match, flag):
    with pytest.raises(ConfigError, match=match) as info:
        CompressConfig.from_options(**kw)
    assert flag in flags_in(str(info.value))


@pytest.mark.parametrize("kw", [
    dict(allocate="dp", budget="bops", target=32, act_bits=8),
    dict(allocate="dp", budget="bops", target=32, act_bits=8, runtime="onnxruntime"),  # 8-bit
    # levels take integer kernels there
    dict(allocate="dp", budget="bops", target=8, level_bits=(4,), level_nm=None,
         group_size=32),
    dict(allocate="dp", budget="flops", target=3.0),
    dict(allocate="dp", budget="params", sparsity=0.6, bits=8),
    dict(allocate="dp", sparsity=0.7, sequential=True),
    dict(profile="p.json", budget="bops"),
    dict(profile="p.json"),
])
def test_valid_allocation_options(kw):
    cfg = CompressConfig.from_options(**kw)
    assert cfg.alloc.active


@pytest.mark.parametrize("kw", [
    dict(bits=4, act_bits=8),  # TensorRT's Q/DQ: W4A8
    dict(bits=7, act_bits=8, runtime="onnxruntime"),  # 7-bit codes on the integer kernels
    dict(bits=8, act_bits=8, symmetric=False),  # an asymmetric grid under TensorRT's Q/DQ
])
def test_activation_bits_where_a_kernel_takes_the_weights(kw):
    assert CompressConfig.from_options(**kw).quant.act_bits == 8


@pytest.mark.parametrize("runtime, given, runs", [
    ("onnxruntime", None, "mse"), ("tensorrt", None, "mse"),
    ("onnxruntime", "minmax", "minmax"), ("tensorrt", "mse", "mse"),
    ("tensorrt", "percentile", "percentile")])
def test_activation_ranges_default_to_mse(runtime, given, runs):
    opts = {} if given is None else {"act_calibration": given}
    cfg = CompressConfig.from_options(bits=8, act_bits=8, runtime=runtime, **opts)
    assert cfg.quant.act_calibration == (given or "auto")
    assert cfg.quant.act_method(cfg.export.runtime) == runs


def test_specs_are_not_mutated_on_construction():
    """Validation never rewrites a field: the scale correction does not switch `mean` on, and
    lists are refused instead of being silently converted."""
    c = Correction(scale=True)
    assert c.active and c.mean is None  # not switched on (None: the automatic default)
    with pytest.raises(ConfigError, match="select.include must be a tuple"):
        Selection(include=["a*"])
    with pytest.raises(ConfigError, match="prune.nm"):
        Pruning(nm=[2, 4])
    with pytest.raises(dataclasses.FrozenInstanceError):
        Pruning(sparsity=0.5).sparsity = 0.7  # type: ignore[misc]


def test_each_section_only_holds_its_own_fields():
    cfg = CompressConfig(prune=Pruning(sparsity=0.5), quant=Quantization(bits=4),
                         run=RunOptions(batch_size=8))
    assert cfg.prune.sparsity == 0.5 and cfg.quant.spec().bits == 4 and cfg.run.batch_size == 8
    assert cfg.quant.spec(8).bits == 8 and Quantization().spec() is None
    assert set(FLAT) >= {"sparsity", "bits", "allocate", "correct", "correct_scale", "include"}


def test_dict_round_trip_through_json():
    cfg = CompressConfig.from_options(sparsity=0.6, allocate="dp", budget="flops",
                                      include="conv*", bits=8, correct_scale=True,
                                      level_bits=[8, 4], batch_size=16)
    again = CompressConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert cfg.select.include == ("conv*",) and cfg.alloc.level_bits == (8, 4)


@pytest.mark.parametrize("d, match", [
    ({"prun": {"sparsity": 0.5}}, "unknown recipe section"),
    ({"prune": {"sparsity": 0.5, "sparsty": 0.1}}, r"unknown field\(s\) \['sparsty'\]"),
    ({"prune": 0.5}, "must be a mapping"),
    ([1, 2], "a recipe is a mapping"),
])
def test_from_dict_refuses_unknown_keys(d, match):
    with pytest.raises(ConfigError, match=match):
        CompressConfig.from_dict(d)


def test_from_options_refuses_unknown_names():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['sparse'\]"):
        CompressConfig.from_options(sparse=0.5)


def test_replace_keeps_the_original(tmp_path):
    a = CompressConfig.from_options(sparsity=0.5, allocate="uniform")
    b = a.replace(bits=4, allocate="dp")
    assert a.quant.bits is None and a.alloc.mode == "uniform"
    assert b.quant.bits == 4 and b.alloc == Allocation(mode="dp") and b.prune == a.prune


def test_recipe_file_and_report_config(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"prune": {"sparsity": 0.4}, "quant": {"bits": 8}}))
    assert load_recipe(str(p)) == CompressConfig.from_options(sparsity=0.4, bits=8)
    report = tmp_path / "report.json"  # a report's `config` is a recipe too
    report.write_text(json.dumps({"config": load_recipe(str(p)).to_dict(), "layers": []}))
    assert load_recipe(str(report)) == load_recipe(str(p))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the recipe"):
        load_recipe(str(bad))


@pytest.mark.parametrize("refine", [None, True, False])
def test_refine_reaches_the_solver_spec(refine):
    """quant.refine (--refine / --no-refine) is carried into the layer's QuantSpec."""
    cfg = CompressConfig.from_options(bits=4, refine=refine)
    assert cfg.quant.spec().refine is refine


def test_the_fast_path_prunes_nm_but_not_blocks():
    assert CompressConfig.from_options(None, nm=(2, 4), method="gptq").prune.nm == (2, 4)
    with pytest.raises(ConfigError, match="gptq prunes unstructured or N:M only"):
        CompressConfig.from_options(None, block=4, sparsity=0.5, method="gptq")
    with pytest.raises(ConfigError, match="gptq's N:M .* drop it"):
        CompressConfig.from_options(None, nm=(2, 4), method="gptq", act_order=True)


def test_nm_takes_the_command_lines_form_as_an_option():
    """nm= / level_nm= as (2, 4) or "2:4" (what a user of the CLI writes) in the flat options
    and recipes (the input layer's coercion); the specs themselves still take the tuple
    only, and other strings are refused naming both forms."""
    assert CompressConfig.from_options(None, nm="2:4").prune.nm == (2, 4)
    assert CompressConfig.from_options(None, nm=" 1 : 8 ").prune.nm == (1, 8)
    assert CompressConfig.from_options(None, budget="bops", allocate="dp", target=8, level_nm="1:4"
                                       ).alloc.level_nm == (1, 4)
    assert CompressConfig.from_dict({"prune": {"nm": "2:4"}}).prune.nm == (2, 4)
    for bad in ("2:x", "2-4", "4:2"):
        with pytest.raises(ConfigError, match=r'\(e\.g\. \(2, 4\) or "2:4"\)'):
            CompressConfig.from_options(None, nm=bad)
    with pytest.raises(ConfigError, match="prune.nm"):
        Pruning(nm="2:4")
