"""Data sufficiency per layer: the effective rank of H against the inputs, the samples
behind it, the data_limited flag and the warning that names the samples that lift it."""

from __future__ import annotations

import numpy as np

from onnx_obc import convert
from onnx_obc.datalimit import data_warning
from onnx_obc.report import LayerResult
from onnx_obc.solve import effective_rank

from . import builders as b


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


def test_warning_shortens_a_tensorflow_export_s_node_names():
    """Basic Pitch (tf2onnx): one layer's node name ran to 300 characters in the warning."""
    name = ";".join(f"model_1/conv2d_1/BiasAdd/ReadVariableOp_{i}" for i in range(7))
    msg = data_warning([_row(name, 936, 736, 64)])
    assert name not in msg and "(rank 736/936, 64 samples)" in msg and "…" in msg
    assert len(msg.split(" (rank")[0].split(": ")[-1]) <= 40


def test_warning_names_the_layers_and_the_samples_that_lift_it():
    few = _row("se_expand", 120, 64, 102)
    collinear = _row("conv", 60, 50, 500)
    msg = data_warning([few, collinear])
    assert "se_expand (rank 64/120, 102 samples)" in msg and "conv (rank 50/60" in msg
    assert "At least 120 calibration samples" in msg
    assert "collinear or constant" in msg
    assert few.data_limited and not _row("ok", 60, 60, 500).data_limited
    assert not _row("dead", 60, 58, 500, dead=2).data_limited  # dead inputs are not missing data


def test_a_layer_solved_in_blocks_is_flagged_when_fewer_columns_than_inputs_were_seen():
    """CREPE-full's 128 x 65,536 conv: 410 frames x 128 positions = 52,480 columns < 65,536
    inputs, and in blocks no rank is computed (the full H is not held) -- it read as not
    data-limited. Here: 4,096 inputs in blocks (16 MB budget), 40 samples x 9 positions."""
    from onnx_obc import convert

    from . import builders as b

    model = b.conv(c_in=512, c_out=8, kernel=(8, 1), spatial=(16, 1), bias=False)
    res = convert(model, None, calib=[b.feeds(model, 50)], bits=4, memory_budget_mb=16,
                  holdout=0.2, progress=False, compare_baseline=False)
    (row,) = res.report.layers
    assert "-blocked(" in row.method and row.rank is None
    assert row.samples == 40 and row.columns == 40 * 9
    assert row.data_limited
    msg = next(w for w in res.report.warnings if "data-limited" in w)
    assert "rank <= 360/4096, 40 samples" in msg
    assert "At least 456 calibration samples" in msg  # ceil(4096 / 9 positions)
    assert "<360/4096!" in res.report.table()


def test_enough_columns_in_blocks_is_not_flagged_and_positions_count_in_the_need():
    conv = _row("conv", 512, 100, 20)  # 20 samples x 16 positions = 320 columns: 32 needed
    conv = LayerResult(**{**conv.__dict__, "columns": 320})
    assert "At least 32 calibration samples" in data_warning([conv])
    from onnx_obc.datalimit import limited as _limited

    assert _limited(None, 320, 512) and not _limited(None, 600, 512)  # in blocks: columns
    assert not _limited(None, None, 512) and _limited(100, 600, 512)  # unknown; rank decides
    # collinear inputs, not too little data: a deficit of one (or 1%) with 4 columns per input
    assert not _limited(383, 8192, 384) and _limited(383, 1000, 384)
    assert _limited(370, 8192, 384) and _limited(383, None, 384)
    assert not _limited(47, 384, 48) and _limited(46, 384, 48)


def test_a_layer_norm_output_is_collinear_not_data_limited():
    """Every row of a LayerNorm's output x_hat * g + b has x_hat summing to 0: the layer after
    it sees rank d - 1 however many tokens come; with 4x more columns than inputs that is not
    flagged (the rank column still shows it), with fewer it is."""
    from onnx import TensorProto, helper

    d = 48
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "bb"], ["h"], name="ln",
                              axis=-1),
             helper.make_node("MatMul", ["h", "W"], ["y"], name="mm")]
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("g", TensorProto.FLOAT, [d], rng.uniform(0.5, 1.5, d)),
             helper.make_tensor("bb", TensorProto.FLOAT, [d], np.zeros(d)),
             b.weight("W", (d, 32), 1)]
    model = b.make(nodes, [b.vi("x", [b.BATCH, 16, d])], [b.vi("y", [b.BATCH, 16, 32])],
                   inits)
    for n, flagged in ((24, False), (2, True)):  # 384 and 32 token columns for 48 inputs
        x = rng.standard_normal((n, 16, d)).astype(np.float32)
        (row,) = convert(model, calib=[{"x": x}], sparsity=0.5, progress=False, holdout=0.0,
                         allocate="uniform").report.layers
        assert row.rank == min(d - 1, n * 16) and row.data_limited == flagged


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


def test_a_sequential_run_warns_once_over_all_its_layers():
    """Sequential (the default at 4 bits) solves one layer group at a time: the data-limited
    layers of every group are named in one warning, not one warning per group."""
    from onnx_obc import convert

    from . import builders as b

    model = b.mlp3((8, 24, 32, 6))
    feeds = [b.feeds(model, 20)]  # 16 fit samples < 24 and < 32 inputs: two limited layers
    r = convert(model, None, calib=feeds, bits=4, progress=False).report
    assert r.config["run"]["sequential"]
    limited = [x.name for x in r.layers if x.data_limited]
    lines = [w for w in r.warnings if "data-limited" in w]
    assert len(limited) >= 2 and len(lines) == 1
    assert lines[0].startswith(f"{len(limited)} layer(s)") and all(n in lines[0] for n in limited)
