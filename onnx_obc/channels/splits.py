"""A producer whose output a Split on the channel axis divides, one part reaching a consumer
(YOLOv8's C2f: cv1 -> SiLU -> Split -> the first half joins the Concat that cv2 reads; CSP
blocks that split one conv): the site is that part alone, the producer's rows
first_row .. first_row + C - 1 of its `rows` (`Site.first_row`, `Site.rows`), the other
parts left whole. The cut removes those rows (and their bias entries, `Site.outer`) and sets
the part's size in the Split's sizes (a `shapes` entry). Each part is tried in turn; the
first that reaches a consumer is the site (a producer is one site)."""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx


def split_site(g: Any, L: Any, label: str, node: onnx.NodeProto, t: str, C: int, axis: int,
               sliced: list, path: list, macs: float, walk: Any, refused: type) -> Any:
    """The Site of the first part of Split `node` (`label`) that `walk(start)` (the
    producer's walk from that part: (tensor, channels, path, macs)) turns into one;
    `refused` with the first part's reason otherwise. `sliced`: the constants cut on the
    way to the Split, at most the producer's own bias (cut with its rows)."""
    dims = g.dims(t)
    at = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if not dims or at % len(dims) != axis % len(dims):
        raise refused(f"its channels reach Split {label!r} on another axis")
    sizes = g.values.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if sizes is None or sum(sizes) != C or len(sizes) != len(node.output):
        raise refused(f"its channels reach Split {label!r}, whose sizes are no constant "
                      "(equal parts could not follow a cut)")
    bias = [s for s in sliced if s[0] in list(g.nodes[L.uses[0].node].input[2:3])]
    if len(bias) != len(sliced):
        raise refused(f"its channels reach Split {label!r} through per-channel constants")
    first = None
    for i, (part, n) in enumerate(zip(node.output, sizes)):
        try:
            site = walk((part, int(n), path + [label], macs))
        except refused as why:
            first = first or why
            continue
        if site.first_row or site.rows:
            continue  # a part split again: not followed
        return dataclasses.replace(
            site, first_row=int(sum(sizes[:i])), rows=C, outer=tuple(bias),
            shapes=site.shapes + ((label, 1, tuple(int(x) for x in sizes), i, 1),))
    raise refused(f"its channels reach Split {label!r}, no part of which is a site (the first: "
                  f"{first or 'split again'})")

