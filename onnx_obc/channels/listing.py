"""`onnx-obc inspect --channels`: the channel sites a `--channels` run would find, on the
folded model as the run sees it, before any data: each site's producer -> consumer, its
channel count and kind, and the producers that keep their channels grouped by reason."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import onnx

from ..names import NAME_WIDTH, short_name
from .patterns import find_sites
from .unshare import unshare

GROUPS = 12  # reasons listed; the rest counted


def site_lines(model: onnx.ModelProto, select: Any) -> list[str]:
    """The listing's lines (`select`: the run's layers.Selection)."""
    from ..fold import fold
    from ..layers import find_layers

    folded = unshare(fold(model)[0])[0]
    layers, _ = find_layers(folded, select)
    sites, refused = find_sites(folded, layers)  # sizes unknown: the sites, not their FLOPs
    lines = ["", f"channel sites ({len(sites)}; --channels cuts these, the FLOPs each saves "
                 "measured in the run):"]
    for s in sites:
        kind = ("heads" if s.split is not None else "" if s.gate is None else
                "fused gate-up" if s.gate.offset else
                "squeeze-excite" if s.gate.squeeze is not None else
                f"gated, with {s.gate.producer.name}")
        kind = ", ".join(k for k in (kind, f"{s.blocks} groups: as many from each" * (
            s.blocks > 1), f"through a Concat: inputs {s.offset}..{s.offset + s.channels - 1}"
            f" of {s.span}" * bool(s.span), f"part of a Split: rows {s.first_row}.."
            f"{s.first_row + s.channels - 1} of {s.rows}" * bool(s.rows),
            f"also read by {', '.join(c.name for c in s.also)}" * bool(s.also)) if k)
        pair = short_name(f"{s.producer.name} -> {s.consumer.name}", 2 * NAME_WIDTH)
        lines.append(f"  {pair}: {s.channels}{' heads' if s.unit > 1 else ' channels'}"
                     + (f" ({kind})" if kind else ""))
    why = Counter(_key(r.reason) for r in refused)
    first: dict[str, str] = {}
    for r in refused:
        first.setdefault(_key(r.reason), r.producer)
    lines.append(f"channels kept ({len(refused)} producers):")
    lines += [f"  {n} x {reason} (the first: {first[reason]})"
              for reason, n in why.most_common(GROUPS)]
    if len(why) > GROUPS:
        lines.append(f"  ... {sum(n for _, n in why.most_common()[GROUPS:])} more")
    return lines


def _key(reason: str) -> str:
    """A refusal reason without its names and numbers: one line per kind of reason."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'…'", reason))
