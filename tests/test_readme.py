"""The README's commands run as tests, as pasted from the repository root: every `onnx-obc`
command line on a shipped model (the README's and docs/'s), every Python block, and the sample
output it shows (its table must be what the main job prints today). The README cannot go
stale."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnx_obc.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = [README] + [p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))]
NEEDS_RAY = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="--engine ray needs the [ray] extra")
NEEDS_PLOT = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                reason="--plot / --html need the [plot] extra")


def _commands() -> list[str]:
    """`onnx-obc ...` command lines (set-up lines: the part after `&&`) whose files exist in
    the repository; schematic lines (IN.onnx, [options]) are not commands."""
    found = []
    for line in "\n".join(PAGES).splitlines():
        m = re.match(r"^    (?:.*&& )?(onnx-obc .*?)\s*(?:#.*)?$", line)
        if not m or "[" in m.group(1) or "IN.onnx" in m.group(1):
            continue
        args = shlex.split(m.group(1))[1:]
        inputs = [a for a in args if "/" in a]
        if inputs and all((ROOT / a).exists() for a in inputs) and m.group(1) not in found:
            found.append(m.group(1))
    return found


COMMANDS = _commands()


@pytest.fixture
def in_repo_copy(tmp_path, monkeypatch):
    """A working directory that looks like the repository root (models/ linked), so relative
    paths resolve as in the README while outputs land in tmp_path."""
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_runnable_commands():
    assert len(COMMANDS) >= 6, COMMANDS
    assert any("--report" in c for c in COMMANDS) and any("inspect" in c for c in COMMANDS)


@pytest.mark.parametrize("command", [  # --engine ray, --plot: only with their extras
    pytest.param(c, marks=NEEDS_RAY) if "--engine ray" in c else
    pytest.param(c, marks=NEEDS_PLOT) if "--plot" in c or "--html" in c else c
    for c in COMMANDS])
def test_readme_command_runs_as_pasted(command, in_repo_copy):
    args = shlex.split(command)[1:]
    res = CliRunner().invoke(main, args + ([] if "inspect" in args else ["-q"]))
    assert res.exit_code == 0, res.output
    outs = [a for a in args if a.endswith(".onnx") and not a.startswith("models/")]
    for out in outs:  # the written model runs in onnxruntime
        sess = ort.InferenceSession(str(in_repo_copy / out), providers=["CPUExecutionProvider"])
        feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
                for i in sess.get_inputs()}
        assert np.isfinite(sess.run(None, feed)[0]).all()


def test_readme_python_blocks_run_as_pasted(in_repo_copy, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    assert "layers" in capsys.readouterr().out


@pytest.mark.auto_holdout
def test_readme_sample_output_is_what_the_main_job_prints(in_repo_copy):
    """The table under "What a run prints" has today's columns, layers and fidelity rows."""
    setup = next(c for c in COMMANDS if "--report" in c)
    res = CliRunner().invoke(main, shlex.split(setup)[1:] + ["-q"])
    assert res.exit_code == 0, res.output
    shown = README.split("### What a run prints", 1)[1].split("```", 2)[1]
    printed = res.output

    def shape(text: str) -> list[str]:
        """Each line's words with the numbers masked (times and losses vary by machine)."""
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(
            ("device:", "wrote", "WARNING"))]
        return [re.sub(r"-?\d[\d.,e+-]*%?", "#", " ".join(ln.split())) for ln in lines]

    assert shape(shown) == shape(printed), "regenerate the README sample: " + printed
