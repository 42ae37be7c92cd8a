"""Lookup tables as GatherBlockQuantized (export/orttables.py): the gathered rows are exactly
(q - z) * s of the codes written; a table already on a block grid comes back unchanged (RTN
exact); the MSE-searched grid beats min-max on heavy-tailed rows; 4-bit codes packed as
onnxruntime reads them; the tables left float, each for its reason; the run's report names
the tables and `--float-tables` keeps them float."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_obc import convert
from onnx_obc.config import CompressConfig
from onnx_obc.export import orttables
from onnx_obc.errors import ConfigError

from .. import builders as b

V, D, L = 600, 128, 6  # 76,800 elements: over orttables.MIN_ELEMENTS


def embedder(table: np.ndarray | None = None, seed: int = 0, extra: str = "") -> onnx.ModelProto:
    """ids [N, 6] int64 --Gather(T [600, 128])--> [N, 6, 128] --MatMul(W [128, 16])--> y.
    extra: "const" also gathers T at constant indices, "axis1" on axis 1 (T then stays
    float), "small" makes T 2 x 128."""
    rng = np.random.default_rng(seed)
    T = rng.standard_t(4, (2 if extra == "small" else V, D)).astype(np.float32) / 4 \
        if table is None else table
    nodes = [helper.make_node("Gather", ["T", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "W"], ["y"], name="proj")]
    inits = [numpy_helper.from_array(T, "T"), b.weight("W", (D, 16), seed + 1)]
    outs = [b.vi("y", [b.BATCH, L, 16])]
    if extra == "const":
        nodes.append(helper.make_node("Gather", ["T", "pos"], ["p"], name="pos_embed"))
        inits.append(numpy_helper.from_array(np.arange(4, dtype=np.int64), "pos"))
        outs.append(b.vi("p", [4, D]))
    if extra == "axis1":
        nodes.append(helper.make_node("Gather", ["T", "col"], ["c"], name="cols", axis=1))
        inits.append(numpy_helper.from_array(np.array([0, 1], np.int64), "col"))
        outs.append(b.vi("c", [len(T), 2]))
    return b.make(nodes, [b.vi("ids", [b.BATCH, L], TensorProto.INT64)], outs, inits)


def ids(n: int, seed: int = 0, high: int = V) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (n, L)).astype(np.int64)


def gathered(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The embed node's output for ids x (the model cut after it)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.insert(0, helper.make_tensor_value_info("e", TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(["e"], {"ids": x})[0]


def table_of(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    n = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    attrs = {a.name: a.i for a in n.attribute}
    return inits[n.input[0]], inits[n.input[2]], inits[n.input[3]], attrs


@pytest.mark.parametrize("bits", [8, 4])
def test_gathered_rows_are_the_written_codes_dequantized(bits):
    """The rewritten model's gathered rows equal (q - z) * s of its codes for every id, and
    are within half a step of the float rows (RTN)."""
    model = embedder()
    out, lines = orttables.rewrite(model, bits)
    onnx.checker.check_model(out, full_check=True)
    assert not any(t.name == "T" for t in out.graph.initializer) and len(lines) == 1
    data, s, z, attrs = table_of(out)
    assert attrs["bits"] == bits and attrs["block_size"] == orttables.block_for(bits, D)
    if bits == 4:  # two codes per byte, low nibble first
        data = np.stack([data & 15, data >> 4], -1).reshape(V, -1)[:, :D]
        z = np.stack([z & 15, z >> 4], -1).reshape(V, -1)[:, :s.shape[1]]
    ref = orttables.dequantize(data, s, z, attrs["block_size"])
    x = ids(8)
    got = gathered(out, x)
    np.testing.assert_array_equal(got, ref[x])
    T = numpy_helper.to_array(model.graph.initializer[0])
    step = np.repeat(s, attrs["block_size"], axis=1)
    inside = np.abs(ref - T) <= step / 2 + 1e-6  # clipped values lie farther
    assert inside.mean() > 0.95


@pytest.mark.parametrize("bits", [8, 4])
def test_a_table_on_a_block_grid_comes_back_exactly(bits):
    """Exact reduction: rows already on an asymmetric block grid (min and max on it) are
    reproduced to the float32 rounding of (q - z) * s."""
    rng = np.random.default_rng(3)
    B, qmax = orttables.block_for(bits, D), 2**bits - 1
    q = rng.integers(0, qmax + 1, (V, D))
    q.reshape(V, D // B, B)[:, :, 0], q.reshape(V, D // B, B)[:, :, 1] = 0, qmax
    s = rng.uniform(0.01, 0.1, (V, D // B))
    z = rng.integers(1, qmax, (V, D // B))
    T = ((q.reshape(V, D // B, B) - z[..., None]) * s[..., None]).reshape(V, D)
    cq, cs, cz = orttables.quantize_table(T.astype(np.float32), bits, B)
    np.testing.assert_allclose(orttables.dequantize(cq, cs, cz, B), T, rtol=1e-5, atol=1e-7)


def minmax(T: np.ndarray, bits: int, block: int | None) -> np.ndarray:
    """Asymmetric min-max RTN of T [V, D] per `block` columns of a row (None: one grid for
    the whole table, as quantize_static stores a Gather's table)."""
    V, D = T.shape
    Tb = T.reshape(1, 1, -1) if block is None else T.reshape(V, D // block, block)
    lo, hi = np.minimum(Tb.min(-1), 0), np.maximum(Tb.max(-1), 0)
    s = (hi - lo) / (2**bits - 1)
    z = np.clip(np.round(-lo / s), 0, 2**bits - 1)
    q = np.clip(np.rint(Tb / s[..., None]) + z[..., None], 0, 2**bits - 1)
    return ((q - z[..., None]) * s[..., None]).reshape(V, D)


def test_the_block_grids_beat_one_grid_and_min_max():
    """Beats the baselines on a table like a vocabulary's (row norms spread over a decade,
    heavy-tailed coordinates): at 8 bits the error is under half of one min-max grid for
    the table (quantize_static's), at 4 bits under 0.8x per-row min-max, and the MSE search
    never loses to min-max on the same blocks."""
    rng = np.random.default_rng(1)
    T = (rng.standard_t(3, (V, D)) * rng.lognormal(0, 0.6, (V, 1))).astype(np.float32)
    err = {}
    for bits in (8, 4):
        B = orttables.block_for(bits, D)
        err[bits] = ((orttables.dequantize(*orttables.quantize_table(T, bits, B), B) - T) ** 2
                     ).sum()
        assert err[bits] <= ((minmax(T, bits, B) - T) ** 2).sum() * (1 + 1e-6)
    assert err[8] < 0.5 * ((minmax(T, 8, None) - T) ** 2).sum()
    assert err[4] < 0.8 * ((minmax(T, 4, D) - T) ** 2).sum()


@pytest.mark.parametrize("extra", ["const", "axis1", "small"])
def test_tables_left_float(extra):
    """Gathered at constant indices as well, also read on axis 1, or small: left float."""
    model = embedder(extra=extra)
    assert orttables.tables(model) == {}
    out, lines = orttables.rewrite(model, 8)
    assert out is model and lines == []


def test_a_width_without_a_block_stays_float():
    T = np.random.default_rng(0).standard_normal((4096, 24)).astype(np.float32)  # 24: no
    assert orttables.block_for(8, 24) is None  # power of two >= 16 divides it
    out, lines = orttables.rewrite(embedder(table=T), 8)
    assert lines == [] and not any(n.op_type == "GatherBlockQuantized" for n in out.graph.node)


@pytest.mark.parametrize("opts,tables,cost", [({"bits": 8, "act_bits": 8}, 8, 0.005),
                                              ({"bits": 4}, 4, 0.06)])
def test_a_run_writes_the_table_as_codes_and_reports_it(tmp_path, opts, tables, cost):
    """The onnxruntime target's run: the table at the run's width (4 bits where every layer
    has 4), the report's line, an output error at most `cost` above the same run's with
    quantize_tables=False (which writes the table float and no line)."""
    calib = tmp_path / "c.npz"
    np.savez(calib, ids=ids(32, 1))
    errs = []
    for quantized in (True, False):
        r = convert(embedder(), tmp_path / "o.onnx", calib=str(calib), runtime="onnxruntime",
                    progress=False, quantize_tables=quantized, **opts)
        out = onnx.load(tmp_path / "o.onnx")
        gbq = [n for n in out.graph.node if n.op_type == "GatherBlockQuantized"]
        line = r.report.fusion.get("tables_line", "")
        if quantized:
            assert [a.i for a in gbq[0].attribute if a.name == "bits"] == [tables]
            assert f"T [{V}, {D}] at {tables} bits" in line and line in r.report.table()
        else:
            assert not gbq and not line and any(t.name == "T" for t in out.graph.initializer)
        errs.append(next(iter(r.report.fidelity.values()))["compressed"].rel_error["y"])
    assert errs[1] < errs[0] <= errs[1] + cost


def test_float_tables_flag(tmp_path):
    """--float-tables on the command line keeps the table float; a bad value is refused."""
    from click.testing import CliRunner

    from onnx_obc.cli import main

    onnx.save(embedder(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", ids=ids(16, 1))
    for flag, kept in (("--float-tables", True), ("--quantize-tables", False)):
        r = CliRunner().invoke(main, [str(tmp_path / "m.onnx"), str(tmp_path / "o.onnx"),
                                      "--calib", str(tmp_path / "c.npz"), "--bits", "4",
                                      "--runtime", "onnxruntime", flag])
        assert r.exit_code == 0, r.output
        out = onnx.load(tmp_path / "o.onnx")
        assert any(t.name == "T" for t in out.graph.initializer) == kept
    assert CompressConfig.from_options(bits=8).export.quantize_tables is True
    with pytest.raises(ConfigError, match="quantize_tables"):
        CompressConfig.from_options(bits=8, quantize_tables="no")
