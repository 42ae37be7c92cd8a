"""The views' checks come before any work: a missing matplotlib (pip install
onnx-obc[plot]), a figure format matplotlib does not write, a path over an input, a
directory that does not exist. Runs without matplotlib."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from onnx_obc import convert, pipeline, view
from onnx_obc.cli import main
from onnx_obc.errors import ConfigError

from .. import builders as b


def test_the_checks_come_before_any_work(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")  # its missing extra is one of the checks
    model = tmp_path / "m.onnx"
    model.write_bytes(b.mlp3().SerializeToString())

    def no_work(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(pipeline, "open_model", no_work)
    with pytest.raises(ConfigError, match="--plot must name a .png"):
        convert(model, None, sparsity=0.5, plot=tmp_path / "r.jpg")
    with pytest.raises(ConfigError, match="would overwrite"):
        convert(model, None, sparsity=0.5, html=model)
    with pytest.raises(ConfigError, match="not writable"):
        convert(model, None, sparsity=0.5, plot=tmp_path / "no" / "r.png")
    real = view.importlib.util.find_spec
    monkeypatch.setattr(view.importlib.util, "find_spec",
                        lambda n, *a: None if n == "matplotlib" else real(n, *a))
    with pytest.raises(view.MissingExtra, match=r"pip install onnx-obc\[plot\]"):
        convert(model, None, sparsity=0.5, html=tmp_path / "r.html")
    convert_ok = CliRunner().invoke(main, [str(model), str(tmp_path / "o.onnx"),
                                           "--sparsity", "0.5", "--plot",
                                           str(tmp_path / "r.png")])
    assert convert_ok.exit_code == 1 and "pip install onnx-obc[plot]" in convert_ok.output
    assert not (tmp_path / "o.onnx").exists()


def test_a_missing_matplotlib_is_named_for_each_view_asked(monkeypatch):
    """Without matplotlib (patched here, so it runs with or without it): the error names the
    views asked and the extra to install, before anything else is checked."""
    real = view.importlib.util.find_spec
    monkeypatch.setattr(view.importlib.util, "find_spec",
                        lambda n, *a: None if n == "matplotlib" else real(n, *a))
    for plot, html, said in (("r.png", None, "--plot needs"), (None, "r.html", "--html needs"),
                             ("r.png", "r.html", "--plot and --html need")):
        with pytest.raises(view.MissingExtra, match=rf"^{said} matplotlib: pip install "
                           r"onnx-obc\[plot\]"):
            view.check(plot, html)
    view.check(None, None)  # no view asked: nothing needed
