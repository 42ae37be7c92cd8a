"""A run's measured choices as the options that repeat them (onnx_obc/pinned.py): the flags
and the recipe name the same choices, and a run with them writes the same file measuring
nothing."""

from __future__ import annotations

import fnmatch
import shlex
from pathlib import Path

from click.testing import CliRunner

from onnx_obc import CompressConfig, convert, floatcheck
from onnx_obc.allocation import guard
from onnx_obc.cli import main
from onnx_obc.pinned import pinned

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_nothing_measured_pins_nothing() -> None:
    assert pinned(CompressConfig.from_options(bits=8), {}) == {}


def test_the_flags_and_the_recipe_name_the_same_choices() -> None:
    cfg = CompressConfig.from_options(bits=8, act_bits=8, runtime="onnxruntime",
                                      float_heads=False, exclude=["head*"])
    odd = "blocks[0]/conv*?"
    p = pinned(cfg, {"float": ["stem", odd, "a b"], "correct": False})
    assert shlex.split(p["flags"]) == [
        "--exclude", "stem", "--exclude", "blocks[[]0]/conv[*][?]", "--exclude", "a b",
        "--int8-stem", "--int8-highres", "--no-correct"]  # float_heads was off already
    again = CompressConfig.from_dict(p["recipe"])
    assert again.select.exclude == ("head*", "stem", "blocks[[]0]/conv[*][?]", "a b")
    assert [fnmatch.fnmatchcase(n, "blocks[[]0]/conv[*][?]") for n in (odd, "blocks0/conv1")] \
        == [True, False]  # the name itself, nothing else
    assert (again.export.float_stem, again.export.float_highres, again.correct.mean) == (
        False, False, False)
    assert again.quant == cfg.quant and again.export.runtime == "onnxruntime"
    assert p["measured"][0].startswith("the float candidates") and p["flags"] in p["line"]


def test_the_allocation_and_a_kept_correction() -> None:
    cfg = CompressConfig.from_options(sparsity=0.5)
    assert guard.applies(cfg)  # the default DP is checked against uniform
    for choice in ("dp", "uniform"):
        p = pinned(cfg, {"allocate": choice, "correct": True})
        assert p["flags"] == f"--correct --allocate {choice}"
        again = CompressConfig.from_dict(p["recipe"])
        assert again.alloc.mode == choice and again.correct.mean is True
        assert not guard.applies(again)  # asked for: not measured again


def _repeat(monkeypatch, out: Path, options: list[str], flags: str) -> str:
    """digits_vit W8A8 on onnxruntime with `options` and the pinned `flags`, from the command
    line, no float candidate measured (floatcheck._accept fails); its printed output."""
    def fail(*a, **k):
        raise AssertionError("a pinned run measures no float candidate")
    monkeypatch.setattr(floatcheck, "_accept", fail)
    res = CliRunner().invoke(main, [str(MODELS / "digits_vit.onnx"), str(out), "--calib",
                                    str(MODELS / "digits_vit.calib.npz"), *options,
                                    "--act-bits", "8", "--runtime", "onnxruntime", "--device",
                                    "cpu", "-q", *shlex.split(flags)])
    assert res.exit_code == 0, res.output
    return res.output


def test_a_pinned_run_writes_the_same_file_measuring_nothing(tmp_path, monkeypatch) -> None:
    """digits_vit W8A8 on onnxruntime: its patch embedding's float candidate timed and
    verified, the bias correction verified (float and kept where they measured better: the
    stem here, either way for the correction); the flags (CLI) and the recipe (API) repeat
    both choices, whichever they were."""
    calib = MODELS / "digits_vit.calib.npz"
    first = convert(MODELS / "digits_vit.onnx", tmp_path / "a.onnx", calib=calib, bits=8,
                    act_bits=8, runtime="onnxruntime", progress=False, device="cpu")
    p = first.report.to_dict()["pinned"]
    assert len(p["measured"]) == 2 and "--int8-stem --int8-highres --int8-heads --" in p["flags"]
    assert p["flags"].split()[-1] in ("--correct", "--no-correct")
    assert p["line"] in first.report.table()

    _repeat(monkeypatch, tmp_path / "b.onnx", ["--bits", "8"], p["flags"])
    again = convert(MODELS / "digits_vit.onnx", tmp_path / "c.onnx", calib=calib,
                    config=CompressConfig.from_dict(p["recipe"]), progress=False)
    assert again.report.pinned == {} and "measured this run" not in again.report.table()
    assert "bias correction (automatic" not in again.report.table()
    a = (tmp_path / "a.onnx").read_bytes()
    assert (tmp_path / "b.onnx").read_bytes() == a and (tmp_path / "c.onnx").read_bytes() == a


def test_float_candidates_are_written_float_where_an_exclude_changes_more() -> None:
    """With --sequential, --channels or pruning an --exclude would change more than the
    float decision (the later layers' fit, the channel cut, the zeros): --float-layer."""
    for kw in (dict(sequential=True), dict(channels=0.2), dict(sparsity=0.5), dict(nm=(2, 4))):
        cfg = CompressConfig.from_options(bits=8, act_bits=8, runtime="onnxruntime", **kw)
        p = pinned(cfg, {"float": ["stem", "a*"], "correct": True})
        assert shlex.split(p["flags"]) == ["--float-layer", "stem", "--float-layer", "a[*]",
                                           "--int8-stem", "--int8-highres", "--int8-heads",
                                           "--correct"]
        again = CompressConfig.from_dict(p["recipe"])
        assert again.export.float_layers == ("stem", "a[*]") and again.select.exclude == ()


def test_a_pinned_pruned_run_writes_the_same_file(tmp_path, monkeypatch) -> None:
    """digits_vit at 50% + W8A8 on onnxruntime (the default DP, checked against uniform):
    its patch embedding kept float, pruned (its float variant timed as faster here); the
    flags repeat the float layer, the allocation and the correction, measuring nothing."""
    from tests.export.test_orthires import _fixed

    _fixed(monkeypatch, {}, {0: 1.0, 1: 0.9})  # the float patch embedding: 0.9x the latency
    calib = MODELS / "digits_vit.calib.npz"
    first = convert(MODELS / "digits_vit.onnx", tmp_path / "a.onnx", calib=calib,
                    sparsity=0.5, bits=8, act_bits=8, runtime="onnxruntime", progress=False,
                    device="cpu")
    p = first.report.to_dict()["pinned"]
    assert "--float-layer patch --int8-stem --int8-highres --int8-heads" in p["flags"]
    assert "--allocate " in p["flags"] and "--exclude" not in p["flags"]
    row = next(r for r in first.report.layers if r.name == "patch")
    assert row.bits is None and row.sparsity > 0

    out = _repeat(monkeypatch, tmp_path / "b.onnx", ["--sparsity", "0.5", "--bits", "8"],
                  p["flags"])
    assert "measured this run" not in out and "allocation (--allocate" not in out
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_float_layer_without_quantization_is_refused() -> None:
    import pytest

    from onnx_obc import ConfigError
    with pytest.raises(ConfigError, match="nothing is quantized"):
        CompressConfig.from_options(sparsity=0.5, float_layers=["stem"])
