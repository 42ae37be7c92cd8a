"""Data sufficiency per layer: the effective rank of H against the inputs, the samples
behind it, the data_limited flag and the warning that names the samples that lift it."""

from __future__ import annotations

import numpy as np

from onnx_obc.report import LayerResult
from onnx_obc.solve import data_warning, effective_rank


def _row(name: str, cols: int, rank: int, samples: int, dead: int = 0) -> LayerResult:
    return LayerResult(name=name, op="Conv", weight=name + ".w", shape=(8, cols, 1, 1), rows=8,
                       cols=cols, groups=1, method="obc", sparsity=0.0, target=0.0, loss=1.0,
                       magnitude_loss=2.0, dead_inputs=dead, damp=0.01, damp_failed=(),
                       seconds=0.0, rank=rank, samples=samples,
                       data_limited=rank < cols - dead)


def test_effective_rank_counts_the_directions_the_samples_span():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 32))  # one column per sample (globally pooled), N < d
    H = (X @ X.T / 32)[None]
    assert effective_rank(H) == 32
    assert effective_rank(np.stack([np.eye(60), H[0]])) == 32  # the smallest over groups
    assert effective_rank(np.eye(5)[None]) == 5


def test_warning_names_the_layers_and_the_samples_that_lift_it():
    few = _row("se_expand", 120, 64, 102)
    collinear = _row("conv", 60, 50, 500)
    msg = data_warning([few, collinear])
    assert "se_expand (rank 64/120, 102 samples)" in msg and "conv (rank 50/60" in msg
    assert "At least 120 calibration samples" in msg
    assert "collinear or constant" in msg
    assert few.data_limited and not _row("ok", 60, 60, 500).data_limited
    assert not _row("dead", 60, 58, 500, dead=2).data_limited  # dead inputs are not missing data


def test_eight_bit_runs_say_the_rank_is_not_computed():
    """8-bit quantization alone skips the rank's eigendecomposition (solve.ranked): the
    rows say so (rank None, data_limited None, "n/c" in the table, null in the JSON) rather
    than show a rank or a clean flag; 4 bits and pruning still compute it, and the flag
    fires on a layer with fewer samples than inputs."""
    import json

    from onnx_obc import convert
    from onnx_obc.quant import QuantSpec
    from onnx_obc.solve import ranked
    from onnx_obc.solvers import Unstructured

    from . import builders as b

    assert not ranked(None, QuantSpec(bits=8))
    assert ranked(None, QuantSpec(bits=4)) and ranked(Unstructured(0.5), QuantSpec(bits=8))
    assert ranked(Unstructured(0.5), None)
    model = b.mlp3((8, 24, 16, 6))
    feeds = [b.feeds(model, 20)]  # 16 fit samples < 24 inputs of the second layer
    r8 = convert(model, None, calib=feeds, bits=8, progress=False).report
    assert all(x.rank is None and x.data_limited is None for x in r8.layers)
    assert "n/c" in r8.table() and "not computed" in r8.table()
    d = json.loads(json.dumps(r8.to_dict()))
    assert all(x["data_limited"] is None and x["rank"] is None for x in d["layers"])
    assert not any("data-limited" in w for w in r8.warnings)
    r4 = convert(model, None, calib=feeds, bits=4, progress=False).report
    assert all(x.rank is not None and x.data_limited is not None for x in r4.layers)
    assert any(x.data_limited for x in r4.layers) and "n/c" not in r4.table()
