"""Structure types: validated on construction (errors name the field), frozen, bound to a
layer's column grouping by `on_columns` (a new instance), and their removal counts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from onnx_obc.errors import ConfigError
from onnx_obc.solvers import (NM, Blocks, Unstructured, conv_nm_groups, linear_nm_groups,
                              solve_layer)

from .data import correlated_H, weights


@pytest.mark.parametrize("make,field", [
    (lambda: Unstructured(1.5), "Unstructured.sparsity"),
    (lambda: Unstructured(-0.1), "Unstructured.sparsity"),
    (lambda: Unstructured(True), "Unstructured.sparsity"),
    (lambda: Unstructured("0.5"), "Unstructured.sparsity"),
    (lambda: NM(0, 4), "NM.n"),
    (lambda: NM(2.0, 4), "NM.n"),
    (lambda: NM(1, 1), "NM.m"),
    (lambda: NM(4, 4), "0 < n < m"),
    (lambda: Blocks(0, 0.5), "Blocks.size"),
    (lambda: Blocks(4, 1.2), "Blocks.sparsity"),
    (lambda: Blocks(4, None), "Blocks.sparsity"),
])
def test_invalid_structures_name_the_field(make, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make()


def test_structures_are_frozen_and_bound_copies():
    g = conv_nm_groups(8, 9, 4)
    nm = NM(2, 4)
    bound = nm.on_columns(g)
    assert nm.col_groups is None and bound.col_groups is not None  # a new instance
    np.testing.assert_array_equal(bound.groups(72), g)
    assert bound == NM(2, 4).on_columns(list(g)) and hash(bound) == hash(NM(2, 4).on_columns(g))
    assert bound.sparsity == 0.5 and "col_groups" not in repr(bound)
    with pytest.raises(dataclasses.FrozenInstanceError):
        bound.n = 1
    blocks = Blocks(4, 0.5).on_columns(linear_nm_groups(32, 4))
    assert dataclasses.replace(blocks, sparsity=0.25).col_groups == blocks.col_groups


@pytest.mark.parametrize("bad,msg", [
    (np.arange(6) // 4, "exactly 4 columns"),  # a group of 2
    (np.arange(8) % 4 - 1, "exactly 4 columns"),  # negative ids
    (np.zeros((2, 4), dtype=int), "integer array of shape"),
    (np.arange(8) / 4, "integer array of shape"),
])
def test_bad_column_groupings_are_config_errors(bad, msg):
    with pytest.raises(ConfigError, match=rf"NM\.col_groups: .*{msg}"):
        NM(2, 4).on_columns(bad)


def test_an_unbound_structure_is_a_clear_error():
    W, H = weights(4, 8, 0), correlated_H(8, 0)[None]
    with pytest.raises(ConfigError, match=r"NM\.col_groups: not bound .*on_columns"):
        solve_layer(W, H, structure=NM(2, 4))
    with pytest.raises(ConfigError, match=r"does not match the layer's 8 columns"):
        solve_layer(W, H, structure=NM(2, 4).on_columns(linear_nm_groups(12, 4)))


def test_removals():
    assert Unstructured(0.5).removals(2, 3, 7) == 21
    assert Unstructured(0.0).removals(2, 3, 7) == 0
    assert NM(2, 4).removals(1, 5, 8) == 20
    assert Blocks(4, 0.3).removals(1, 10, 8) == 4 * round(0.3 * 80 / 4)  # whole blocks
