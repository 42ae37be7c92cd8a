"""The report for a person: a figure (`--plot out.png`) and a self-contained HTML page
(`--html out.html`, the figure inline as a PNG plus the tables). Needs matplotlib, the
optional extra `pip install onnx-obc[plot]`; `check` says so before any work starts.

    check(plot, html, inputs)          # at the start of a run
    write_views(report, plot, html)    # at its end, each file written atomically

    figure.py  the matplotlib figure: per-layer loss ratio, level, data-limited flag,
               sensitivity, and the allocation's error-versus-budget curve
    page.py    the HTML page
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable

from ..errors import ConfigError, ObcError
from ..atomic import write_atomic
from ..report import Report

FIGURES = (".png", ".svg", ".pdf")  # --plot's formats


class MissingExtra(ObcError):
    """matplotlib is not installed."""


def check(plot: str | os.PathLike | None, html: str | os.PathLike | None,
          inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Before any work: matplotlib importable, the paths writable and none over an input."""
    paths = [(flag, os.fspath(p)) for flag, p in (("--plot", plot), ("--html", html)) if p]
    if not paths:
        return
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtra(f"{' and '.join(f for f, _ in paths)} "
                           f"need{'s' if len(paths) == 1 else ''} matplotlib: "
                           "pip install onnx-obc[plot] (or pip install matplotlib)")
    if plot and not os.fspath(plot).lower().endswith(FIGURES):
        raise ConfigError(f"--plot must name a {', '.join(FIGURES)} file, got {os.fspath(plot)!r} "
                          "(e.g. report.png)")
    taken = {os.path.realpath(os.fspath(p)) for p in inputs if p}
    for flag, p in paths:
        real = os.path.realpath(p)
        if real in taken:
            raise ConfigError(f"{flag} {p} would overwrite an input or another output of this "
                              "run; give another path")
        taken.add(real)
        folder = os.path.dirname(os.path.abspath(p))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ConfigError(f"{flag} {p}: the directory {folder} does not exist or is not "
                              "writable; give a path in a writable directory")


def write_views(report: Report, plot: str | os.PathLike | None = None,
                html: str | os.PathLike | None = None) -> list[str]:
    """Write the figure and/or the page; returns the paths written."""
    if not (plot or html):  # matplotlib's import alone is a second of every run
        return []
    from . import figure, page

    written = []
    if plot:
        fmt = os.fspath(plot).rsplit(".", 1)[-1].lower()
        write_atomic(plot, figure.render(report, fmt), "the figure", "--plot")
        written.append(os.fspath(plot))
    if html:
        write_atomic(html, page.render(report, figure.render(report, "png")).encode(),
                     "the HTML report", "--html")
        written.append(os.fspath(html))
    return written
