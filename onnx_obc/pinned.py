"""A run's measured choices as the options that repeat them without measuring.

Some of a run's choices are measured, not ruled: the onnxruntime target's float candidates
(floatcheck.py: the stem, the high-resolution and the output convs kept float where the
run's latency and output error say so), the automatic bias correction (kept where it lowers
the output error: correct.auto_decision) and `--allocate auto`'s DP against uniform levels
(allocation/guard.py). A latency ratio near its limit falls either side between runs
(PP-LCNet's high-resolution convs at 1.035x and 1.25x against 1.05x in two runs of one
command on a busy machine), so two runs of the same command can write different files.
The report names the options that repeat this run's choices with nothing measured: the
layers kept float as `--exclude` (`--float-layer` where the run prunes, cuts channels or is
sequential), the float candidates' `--int8-*` (nothing left to measure), `--correct` /
`--no-correct`, `--allocate dp` / `uniform`, `--accuracy-level` (nbitslevel.py); and the
same as a recipe (the report's `pinned`). Such a run writes the same file
(tests/test_pinned.py), in less time (PP-LCNet W8A8 on the onnxruntime target: 5.7 s
against 15.3 s).

    decided = {"float": ["Conv.0", "Conv.1"], "correct": False}  # Compressed.decided
    pinned(cfg, decided)  # {"flags": "--exclude Conv.0 ... --no-correct", "recipe": {...},
                          #  "measured": [what, in words], "line": the report's line}
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any

FLOAT_FLAGS = {"float_stem": "--int8-stem", "float_highres": "--int8-highres",
               "float_heads": "--int8-heads"}  # export option -> the flag that turns it off


def pinned(cfg: Any, decided: Mapping[str, Any]) -> dict[str, Any]:
    """{"flags": the options as one shell line, "recipe": cfg's dict with them applied, ...}
    for the choices in `decided` ("float": node labels kept float by the measured candidates,
    "correct": whether the automatic correction was kept, "allocate": "dp" or "uniform");
    {} when nothing was measured. `cfg`: the run's CompressConfig. The float candidates
    kept float are `--exclude`d (their solve skipped too), except where an exclude would
    change more than them — with --sequential (the layers after them fitted on their
    quantized outputs), --channels (their channels cut) or pruning (their zeros): there
    `--float-layer` writes them float after the same solve (floatlayers.py)."""
    if not decided:
        return {}
    d, flags = cfg.to_dict(), []
    if "float" in decided:
        nodes = list(decided["float"])
        after = cfg.run.sequential or cfg.prune.channels is not None or cfg.prune.active
        section, field, named = ("export", "float_layers", "--float-layer") if after else (
            "select", "exclude", "--exclude")
        d[section][field] = [*d[section][field], *map(literal, nodes)]
        flags.append(exclude_flags(nodes, named))
        for option, flag in FLOAT_FLAGS.items():
            if d["export"][option]:
                d["export"][option] = False
                flags.append(flag)
    if "correct" in decided:
        d["correct"]["mean"] = bool(decided["correct"])
        flags.append("--correct" if decided["correct"] else "--no-correct")
    if "allocate" in decided:
        d["alloc"]["mode"] = decided["allocate"]
        flags.append(f"--allocate {decided['allocate']}")
    if "accuracy_level" in decided:
        d["export"]["accuracy_level"] = decided["accuracy_level"]
        flags.append(f"--accuracy-level {decided['accuracy_level']}")
    measured, text = [WHAT[k] for k in WHAT if k in decided], " ".join(f for f in flags if f)
    return {"flags": text, "recipe": d, "measured": measured,
            "line": f"measured this run: {', '.join(measured)}; the same choices without "
                    f"measuring: add {text}"}


WHAT = {"float": "the float candidates (timed: near a limit, either way between runs)",
        "correct": "the bias correction", "allocate": "the DP against uniform levels",
        "accuracy_level": "MatMulNBits' accuracy level (timed)"}


def exclude_flags(nodes: Iterable[str], flag: str = "--exclude") -> str:
    """`--exclude 'node'` (or `flag`) for every node, glob characters escaped, shell-quoted."""
    return " ".join(f"{flag} {shlex.quote(literal(n))}" for n in nodes)


def literal(name: str) -> str:
    """A glob (fnmatch) pattern that matches exactly `name`."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
