"""Layer names shortened for the report's tables: a TensorFlow export's run to hundreds of
characters, a transformer's share all but their middle ("/bert/encoder/layer.3/attention/
self/query/MatMul")."""

from __future__ import annotations

from collections.abc import Callable, Sequence

NAME_WIDTH = 40  # node names in the layer table (whole in the JSON)
SKIP_NAME_WIDTH = 72  # node names in the list of skipped layers


def short_name(name: str, width: int) -> str:
    """`name` in at most `width` characters: its head and tail, "…" between (whole "/"
    components where they fit: "StatefulPartitionedCall/model/…/conv2d_3/Conv2D")."""
    if len(name) <= width:
        return name
    parts = name.split("/")
    head, tail = parts[:1], parts[-1:]
    if len(parts) > 2 and len(head[0]) + len(tail[0]) + 3 <= width:
        i, j = 1, len(parts) - 2  # next head component, next tail component
        while i <= j:
            grew = False
            for side in ("tail", "head"):
                if i > j:
                    break
                h, t = (head, [parts[j], *tail]) if side == "tail" else ([*head, parts[i]], tail)
                if len("/".join(h)) + len("/".join(t)) + 3 <= width and (i < j or side == "head"):
                    head, tail = h, t
                    i, j = (i, j - 1) if side == "tail" else (i + 1, j)
                    grew = True
            if not grew:
                break
        return "/".join(head) + "/…/" + "/".join(tail)
    keep = width - 1
    return name[: (keep + 1) // 2] + "…" + name[len(name) - keep // 2:]


def common_head(names: Sequence[str]) -> int:
    """How many leading "/" components every one of `names` shares (each keeps at least its
    last one); 0 for fewer than two names."""
    parts = [n.split("/") for n in names]
    if len(parts) < 2:
        return 0
    k = 0
    while all(len(p) > k + 1 for p in parts) and len({p[k] for p in parts}) == 1:
        k += 1
    return k


def shortener(names: Sequence[str], width: int) -> Callable[[str], str]:
    """short_name for one table of `names`: a name over `width` first loses the leading
    components all of them share ("…/layer.3/attention/self/query/MatMul", where head and
    tail alone gave "/bert/encoder/…/self/query/MatMul" for six layers of a BERT), then,
    still too long, keeps its head and tail (short_name)."""
    k = common_head(names)

    def short(name: str) -> str:
        rest = "…/" + "/".join(name.split("/")[k:]) if k else name
        return name if len(name) <= width else rest if len(rest) <= width else short_name(
            name, width)
    return short
