"""The report as one self-contained HTML page: the figure inline (base64 PNG), then the
tables (fidelity, layers, sensitivity with the --exclude flags, the allocation, the
decisions with the options that repeat them, warnings).
Every name is escaped; nothing is loaded from elsewhere."""

from __future__ import annotations

import base64
import math
from html import escape
from typing import Any

from ..report import Report
from .figure import level_text

STYLE = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
         "font-size:13px;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 6px}"
         "td.n{text-align:right;font-family:monospace}tr.flag td{background:#fdecea}"
         "img{max-width:100%}code{background:#f3f3f3;padding:2px 4px}")


def render(report: Report, png: bytes) -> str:
    r = report
    body = [f"<h1>onnx-obc report: {escape(r.model)}</h1>",
            f"<p>output {escape(str(r.output))}; device {escape(r.device)}; "
            + escape(", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items())) + "</p>",
            f'<img alt="report figure" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}">']
    body += _fidelity(r) + _layers(r) + _sensitivity(r) + _allocation(r) + _decisions(r)
    if r.warnings:
        body += ["<h2>Warnings</h2><ul>"] + [f"<li>{escape(w)}</li>" for w in r.warnings]
        body += ["</ul>"]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>onnx-obc report"
            f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _decisions(r: Report) -> list[str]:
    """What the run measured and kept (the footer's lines), and the options that repeat it
    without measuring (pinned.py)."""
    said = r.decisions()
    if not said and not r.pinned:
        return []
    out = ["<h2>Decisions</h2><ul>"] + [f"<li>{escape(x)}</li>" for x in said] + ["</ul>"]
    return out + ([f"<p>The same choices without measuring: <code>"
                   f"{escape(r.pinned['flags'])}</code></p>"] if r.pinned else [])


def _table(head: list[str], rows: list[list[Any]], flagged: list[bool] | None = None
           ) -> list[str]:
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        cls = ' class="flag"' if flagged and flagged[i] else ""
        out.append(f"<tr{cls}>" + "".join(_cell(v) for v in row) + "</tr>")
    return out + ["</table>"]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        text = "-" if math.isnan(v) else f"{v:.4g}"
        return f'<td class="n">{text}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="n">{v}</td>'
    return f"<td>{escape('-' if v is None else str(v))}</td>"


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.2f}%"


def _fidelity(r: Report) -> list[str]:
    out = []
    for set_name, models in r.fidelity.items():
        out.append(f"<h2>Model fidelity on {escape(set_name)}</h2>")
        out += _table(["model", "rel. output error", "top-1 agreement", "accuracy"],
                      [[m, f.error, _pct(f.top1_agreement),
                        _pct(f.accuracy)] for m, f in models.items()])
        aside = next((f.aside for f in models.values() if f.aside), ())
        out += [f"<p>The error is the largest over the outputs but the {len(aside)} KV-cache "
                f"outputs ({escape(', '.join(aside))}); each output's in the JSON report.</p>"
                ] * bool(aside)
    return out


def _layers(r: Report) -> list[str]:
    if not r.layers:
        return []
    rows = [[x.name, x.op, f"{x.rows}x{x.cols}", level_text(x), x.sparsity, x.loss,
             x.magnitude_loss, x.ratio, "not computed" if x.data_limited is None else "-"
             if x.rank is None else f"{x.rank}/{x.cols}",
             x.samples, "yes" if x.data_limited else "n/c" if x.data_limited is None else "",
             x.seconds] for x in r.layers]
    return ["<h2>Layers</h2>"] + _table(
        ["layer", "op", "W [out,in]", "level", "sparsity", "loss", "baseline loss",
         "ratio", "rank of H", "samples", "data-limited", "s"], rows,
        [x.data_limited for x in r.layers])


def _sensitivity(r: Report) -> list[str]:
    s = r.sensitivity
    if not s:
        return []
    out = [f"<h2>Sensitivity</h2><p>Output error on {escape(s['set'])} ({s['samples']} "
           "samples) with only that layer compressed, the others dense; worst first.</p>"]
    first = set(s["exclude"])
    out += _table(["#", "layer", "output error", "share of squared errors", "top-1 agreement"],
                  [[i + 1, x["layer"], x["error"], _pct(x["share"]), _pct(x["top1_agreement"])]
                   for i, x in enumerate(s["layers"])],
                  [x["layer"] in first for x in s["layers"]])
    if s["flags"]:
        out.append(f"<p>To exclude first (highlighted): <code>{escape(s['flags'])}</code></p>")
    return out


def _allocation(r: Report) -> list[str]:
    p = r.profile
    if not p.get("curve"):
        return []
    dense = p["dense_cost"] or 1.0
    out = [f"<h2>Allocation</h2><p>Budget {escape(str(p['budget']))}: kept "
           f"{p['cost'] / dense:.2%} of the dense cost; estimated error {p['error']:.4g} "
           f"({escape(str(p['score']))} score).</p>"]
    return out + _table(["budget (fraction of dense)", "least estimated error"],
                        [[b / dense, e] for b, e in p["curve"][::max(1, len(p["curve"]) // 12)]])
