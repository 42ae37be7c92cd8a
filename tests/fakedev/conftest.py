"""The fake device for these tests: `fake` stands it in for CuPy (get_backend("cuda") returns
it) with its counters reset, and `crossings` reads them."""

from __future__ import annotations

from collections import Counter

import pytest

from onnx_obc.backend import stand_in_device

from . import fakecupy

TRANSFERS = ("h2d", "h2d_implicit", "d2h")


@pytest.fixture
def fake():
    fakecupy.reset()
    with stand_in_device("fake", fakecupy, fakecupy.ndarray) as backend:
        yield backend
    fakecupy.reset()


def transfers(counts: Counter) -> int:
    return sum(counts[k] for k in TRANSFERS)


def sites(kinds: tuple[str, ...] = TRANSFERS + ("sync",)) -> dict[str, int]:
    """{"kind path:line function": count} of the crossings so far, most frequent first."""
    out = Counter()
    for (kind, site), n in fakecupy.SITES.items():
        if kind in kinds:
            out[f"{kind} {site}"] += n
    return dict(out.most_common())
