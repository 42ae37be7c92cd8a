"""The report views: the figure decodes as an image of the right kind, the HTML page is
self-contained (every layer name, an inline PNG that decodes, names escaped), and files are
written atomically. (Skipped without matplotlib; test_check.py runs without it.)"""

from __future__ import annotations

import base64
import io
import os
import re
from dataclasses import replace

import pytest
from click.testing import CliRunner

from onnx_obc import convert, view
from onnx_obc.cli import main
from onnx_obc.errors import ObcError

from .. import builders as b

mpl_image = pytest.importorskip("matplotlib.image")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model = b.mlp3()
    feed = b.feeds(model, 64, seed=1)
    folder = tmp_path_factory.mktemp("views")
    res = convert(model, None, calib=[feed], progress=False, device="cpu", sparsity=0.5,
                  allocate="dp", sensitivity=True, plot=folder / "r.png",
                  html=folder / "r.html")
    return res, folder


def _image(data: bytes):
    assert data.startswith(PNG)
    return mpl_image.imread(io.BytesIO(data), format="png")


def test_convert_writes_a_decodable_figure_and_page(run):
    res, folder = run
    assert [p.name for p in res.written] == ["r.png", "r.html"]
    img = _image((folder / "r.png").read_bytes())
    assert img.shape[0] > 300 and img.shape[1] > 800  # three panels and the curve
    page = (folder / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "http" not in page  # nothing loaded
    for x in res.report.layers:
        assert f"<td>{x.name}</td>" in page
    inline = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert _image(base64.b64decode(inline.group(1))).shape == img.shape
    assert res.report.sensitivity["layers"][0]["layer"] in page
    assert "Allocation" in page and "Sensitivity" in page
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]


def test_names_are_escaped_and_every_format_renders(run, tmp_path):
    res, _ = run
    layers = [replace(x, name=f"<b>{x.name}&") for x in res.report.layers]
    rep = replace(res.report, layers=layers, sensitivity={}, profile={})
    written = view.write_views(rep, tmp_path / "a.svg", tmp_path / "a.html")
    page = (tmp_path / "a.html").read_text()
    assert "<b>fc1&" not in page and "&lt;b&gt;fc1&amp;" in page
    assert "Sensitivity" not in page and "Allocation" not in page
    assert (tmp_path / "a.svg").read_text().lstrip().startswith("<?xml")
    assert written == [str(tmp_path / "a.svg"), str(tmp_path / "a.html")]
    view.write_views(rep, tmp_path / "a.pdf")
    assert (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF")


def test_the_page_lists_the_decisions_and_the_options_that_repeat_them(run, tmp_path):
    res, _ = run
    note = "float candidates for onnxruntime, stem (<conv>): kept float"
    rep = replace(res.report, notes=[note], pinned={"flags": "--exclude '<conv>' --int8-stem"})
    view.write_views(rep, None, tmp_path / "d.html")
    page = (tmp_path / "d.html").read_text()
    assert "<h2>Decisions</h2>" in page and "stem (&lt;conv&gt;): kept float" in page
    assert "<code>--exclude &#x27;&lt;conv&gt;&#x27; --int8-stem</code>" in page
    plain = replace(res.report, notes=[], pinned={}, folded={}, correction={})
    view.write_views(plain, None, tmp_path / "e.html")
    assert "Decisions" not in (tmp_path / "e.html").read_text()


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    (tmp_path / "keep.png").write_bytes(b"old")
    (tmp_path / "d").mkdir()
    with pytest.raises(ObcError, match="cannot write"):
        view.write_atomic(tmp_path / "d", b"new", "the figure", "--plot")  # a directory cannot be replaced
    assert sorted(os.listdir(tmp_path)) == ["d", "keep.png"]


def test_the_cli_writes_the_views(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b.mlp3().SerializeToString())
    out = CliRunner().invoke(main, [str(model), str(tmp_path / "o.onnx"), "--sparsity", "0.5",
                                    "--sensitivity", "--plot", str(tmp_path / "r.png"),
                                    "--html", str(tmp_path / "r.html"), "-q"])
    assert out.exit_code == 0, out.output
    assert "sensitivity on " in out.output and str(tmp_path / "r.html") in out.output
    _image((tmp_path / "r.png").read_bytes())
    assert "fc3" in (tmp_path / "r.html").read_text()
