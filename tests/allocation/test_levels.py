"""Per-layer levels: labels round-trip, bad labels are refused with the grammar, and the
bit-operation cost model (MACs x density x weight bits x activation bits)."""

from __future__ import annotations

import pytest

from onnx_obc.errors import ConfigError
from onnx_obc.allocation import Level, mixed_levels


@pytest.mark.parametrize("text, level", [
    ("fp32", Level()),
    ("dense", Level()),
    ("w8", Level(bits=8)),
    ("2:4", Level(nm=(2, 4))),
    ("4:8+w4", Level(nm=(4, 8), bits=4)),
    ("0.5", Level(sparsity=0.5)),
    ("0.75+w8", Level(sparsity=0.75, bits=8)),
    (0.3, Level(sparsity=0.3)),
    (0, Level()),
])
def test_labels_parse_and_round_trip(text, level):
    got = Level.parse(text)
    assert got == level
    assert Level.parse(got.label) == got


@pytest.mark.parametrize("bad, match", [
    ("", "is not a sparsity"), ("half", "is not a sparsity"), ("w", "is not a sparsity"),
    ("1.5", "is not a sparsity"), (1.0, r"not a sparsity in \[0, 1\)"), (-0.1, "not a"),
    (True, "not a level"), ("4:2", "0 < N < M"), ("w9", "bits must be 2..8"),
    (float("nan"), "not a sparsity"),
])
def test_bad_labels_say_what_is_accepted(bad, match):
    with pytest.raises(ConfigError, match=match):
        Level.parse(bad)


def test_bops_per_mac():
    assert Level().bops_per_mac(act_bits=8) == 32 * 32  # fp32 layers keep float activations
    assert Level(bits=8).bops_per_mac(act_bits=8) == 64
    assert Level(bits=8).bops_per_mac(act_bits=None) == 8 * 32  # weight-only
    assert Level(bits=4, nm=(2, 4)).bops_per_mac(act_bits=8) == 16
    assert Level(sparsity=0.75, bits=4).bops_per_mac(act_bits=8) == 8
    assert Level(nm=(2, 4)).bops_per_mac(act_bits=8) == 512
    assert Level(nm=(2, 4)).density == 0.5 and Level(sparsity=0.25).density == 0.75


def test_mixed_levels_are_obcs_database_with_fp32_first():
    lv = mixed_levels((8, 4), (2, 4), nm_ok=True)
    assert [x.label for x in lv] == ["fp32", "w8", "w4", "2:4", "2:4+w8", "2:4+w4"]
    assert [x.label for x in mixed_levels((8,), (2, 4), nm_ok=False)] == ["fp32", "w8"]
    assert [x.label for x in mixed_levels((4,), None, nm_ok=True)] == ["fp32", "w4"]
