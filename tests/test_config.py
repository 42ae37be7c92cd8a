"""CompressConfig validation of the allocation options: contradictory or missing targets are
refused with the option to fix, the valid combinations are accepted."""

from __future__ import annotations

import pytest

from onnx_obc.config import CompressConfig
from onnx_obc.errors import ConfigError


@pytest.mark.parametrize("kw, match", [
    (dict(allocate="dp", budget="bops"), "add --target"),
    (dict(budget="bops", target=32), "add --allocate dp"),
    (dict(allocate="dp", budget="bops", target=32, bits=8), "drop --sparsity, --bits"),
    (dict(allocate="dp", budget="bops", target=32, sparsity=0.5), "drop --sparsity"),
    (dict(allocate="dp", budget="bops", target=32, method="gptq"), "drop --method"),
    (dict(allocate="dp", budget="bops", target=0.5), "reduction factor >= 1"),
    (dict(allocate="dp", budget="bops", target=8, level_bits=(8, 8)), "distinct"),
    (dict(allocate="dp", budget="bops", target=8, level_bits=(9,)), "from 2 to 8"),
    (dict(allocate="dp", budget="bops", target=8, level_nm=(4, 2)), "0 < N < M"),
    (dict(allocate="dp", sparsity=0.5, target=2.0, budget="flops"), "once"),
    (dict(allocate="dp", budget="sparsity", target=2.0), "--budget sparsity give --sparsity"),
    (dict(allocate="dp"), "add --sparsity"),
    (dict(allocate="dp", budget="fast"), "budget must be"),
    (dict(nm=(2, 4), allocate="dp"), "--budget bops"),
])
def test_bad_allocation_options(kw, match):
    with pytest.raises(ConfigError, match=match):
        CompressConfig(**kw)


@pytest.mark.parametrize("kw", [
    dict(allocate="dp", budget="bops", target=32, act_bits=8),
    dict(allocate="dp", budget="bops", target=8, level_bits=(4,), level_nm=None,
         group_size=32),
    dict(allocate="dp", budget="flops", target=3.0),
    dict(allocate="dp", budget="params", sparsity=0.6, bits=8),
    dict(allocate="dp", sparsity=0.7, sequential=True),
    dict(profile="p.json", budget="bops"),
    dict(profile="p.json"),
])
def test_valid_allocation_options(kw):
    cfg = CompressConfig(**kw)
    assert cfg.allocated


def test_correct_scale_implies_the_mean_correction():
    assert CompressConfig(sparsity=0.5, correct_scale=True).correct
