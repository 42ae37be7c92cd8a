"""The whole job on the fake device (--device cuda with the fake standing in for CuPy), every
mode, against the NumPy run: the same output model bit for bit and the same report losses
(the fake computes with NumPy, so any difference is a device-path bug), and a bounded number
of host <-> device copies per layer (weights in, results out; no per-step round trips)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from onnx_obc import convert, costmodel
from tests import builders
from tests.channels import graphs

from . import fakecupy as fc
from .conftest import TRANSFERS, sites

CONV = dict(model=lambda: graphs.conv_bn_relu_conv(c_in=4, mid=8, c_out=8))
MLP = dict(model=lambda: graphs.transformer_mlp(d=16, hidden=32))
DECONV = dict(model=lambda: graphs.deconv_bn_relu_conv(c_in=4, mid=8, c_out=8))
MODES = {  # name: (model, options)
    "unstructured": (CONV, dict(sparsity=0.5, allocate="uniform")),
    "nm": (CONV, dict(nm=(2, 4))),
    "nm-gptq": (CONV, dict(nm=(2, 4), method="gptq")),
    "blocks": (CONV, dict(block=4, sparsity=0.5)),
    "obq": (CONV, dict(bits=4)),
    "obs+obq": (CONV, dict(bits=8, sparsity=0.5, allocate="uniform")),
    "obq-groups-asym": (MLP, dict(bits=4, group_size=8, symmetric=False)),
    "gptq": (CONV, dict(method="gptq", bits=4, sparsity=0.5)),
    "gptq-act-order": (MLP, dict(method="gptq", bits=4, act_order=True)),
    "dp-sparsity": (CONV, dict(allocate="dp", sparsity=0.6)),
    "dp-bops": (MLP, dict(allocate="dp", budget="bops", target=8)),
    "dp-output-score": (CONV, dict(allocate="dp", sparsity=0.6, score="output")),
    "correct": (CONV, dict(sparsity=0.5, allocate="uniform", correct=True, correct_scale=True)),
    "sequential": (CONV, dict(sparsity=0.5, allocate="uniform", sequential=True)),
    "act-bits": (CONV, dict(bits=8, act_bits=8)),
    "channels": (CONV, dict(channels=0.3)),
    "onnxruntime": (MLP, dict(bits=4, runtime="onnxruntime", correct=True, sequential=False)),
    "deconv": (DECONV, dict(sparsity=0.5, allocate="uniform")),  # its phases' Hessian blocks
    "deconv-obq": (DECONV, dict(bits=4)),  # sequential: the phases' cross moments too
}
# copies per compressed layer outside the calibration capture, as measured (an added copy
# fails; bench/device_crossings.py --sites lists them): W in, results out (weights, and when
# quantized codes, scale, zero, of the compressed and the baseline solution: 2 or 8), host
# index arrays of the solvers (row batches, column groups); the DP solves every level (the
# output score evaluates each level's weights with onnxruntime, on the host); channels: 8
# with --channel-objective layer, + 5 as measured for the output objective's two probe cuts
# per site (sensitivity.py: the consumer's W in once, its update out per probe, ...)
PER_LAYER = {"unstructured": 5, "nm": 7, "nm-gptq": 5, "blocks": 8, "obq": 10, "obs+obq": 12,
             "obq-groups-asym": 10, "gptq": 9, "gptq-act-order": 9, "dp-sparsity": 7,
             "dp-bops": 21, "dp-output-score": 38, "correct": 5, "sequential": 5,
             "act-bits": 10, "channels": 13, "onnxruntime": 10, "deconv": 5, "deconv-obq": 10}

# activation copies of the capture: 3 batches of 8 fit samples x 2 layers; sequential adds the
# dense model's inputs of its second group (also the default of weights alone below 8 bits
# and of N:M alone: obq, obq-groups-asym, gptq-act-order, nm, nm-gptq); the channel stage
# captures its one consumer
CAPTURE = {"channels": 3, **{m: 9 for m in ("sequential", "obq", "obq-groups-asym",
                                             "gptq-act-order", "nm", "nm-gptq", "deconv-obq")}}
# a ConvTranspose's phase Hessians (deconv.phase_columns): per batch and output phase, the
# indices of its block of H (3 batches x 4 phases of a 2-D stride 2)
PHASES = {"deconv": 12, "deconv-obq": 12}


def _inits(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _run(saved, spec, options, device):
    model = spec["model"]()
    path, data = saved(model, n=24, seed=1)
    return convert(path, None, calib=data, progress=False, device=device, batch_size=8,
                   **options)


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_on_the_fake_device_is_the_numpy_run(mode, saved, fake):
    spec, options = MODES[mode]
    cpu = _run(saved, spec, options, "cpu")
    costmodel.calibrate(fake.xp, fake.sync)  # the plan's rates: measured once per process
    fc.reset()
    dev = _run(saved, spec, options, "cuda")
    assert dev.report.device.startswith("fake")
    a, b = _inits(cpu.model), _inits(dev.model)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [x.loss for x in dev.report.layers] == [x.loss for x in cpu.report.layers]
    assert [x.magnitude_loss for x in dev.report.layers] == [
        x.magnitude_loss for x in cpu.report.layers]
    if options.get("channels"):
        assert dev.report.channels["rows"] == cpu.report.channels["rows"]
    # copies: the capture moves each batch's activations once per use; the rest is per layer
    crossings = sites(TRANSFERS)
    capture = sum(n for s, n in crossings.items() if "onnx_obc/collect.py" in s)
    assert capture == CAPTURE.get(mode, 6)  # 3 batches x 2 layers, nothing per step
    assert sum(n for s, n in crossings.items() if "onnx_obc/deconv.py" in s) == PHASES.get(
        mode, 0)
    others = {s: n for s, n in crossings.items()
              if "onnx_obc/collect.py" not in s and "onnx_obc/deconv.py" not in s}
    layers = max(1, len(dev.report.layers))
    assert sum(others.values()) <= PER_LAYER[mode] * layers, others
    assert fc.COUNTS["h2d_implicit"] == 0, others  # no host array hides in a device index


@pytest.mark.parametrize("options", [dict(sparsity=0.5), dict(bits=4),
                                     dict(method="gptq", bits=4, sparsity=0.5),
                                     dict(nm=(2, 4)), dict(block=4, sparsity=0.5)],
                         ids=["obs", "obq", "gptq", "nm", "blocks"])
def test_copies_per_layer_do_not_grow_with_the_layer_width(options, saved, fake):
    """The same graph at two widths (layer inputs d = 8 and 16, then 32 and 64): the same
    number of copies, and the synchronisations grow by the rows' stop checks only (one
    every few steps; a round trip per step would add one per column: 24+ per layer here).
    Without the held-out shrinkage search, which only the wide layers' few columns per input
    start (a dozen more solves each: solvers/shrink.py)."""
    counts = []
    for d in (8, 32):
        path, data = saved(graphs.transformer_mlp(d=d, hidden=2 * d), n=24, seed=1)
        fc.reset()
        convert(path, None, calib=data, progress=False, device="cuda", batch_size=8,
                shrink=False, **options)
        counts.append({k: fc.COUNTS[k] for k in TRANSFERS + ("sync",)})
    narrow, wide = counts
    assert {k: wide[k] for k in TRANSFERS} == {k: narrow[k] for k in TRANSFERS}
    assert wide["sync"] <= 1.5 * narrow["sync"], counts


def _qkv(d: int = 8):
    """A MatMul, then three MatMuls on its output (attention's Q, K, V), summed."""
    from onnx import helper

    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h"], name="fc")]
    nodes += [helper.make_node("MatMul", ["h", f"W{n}"], [n], name=n) for n in "qkv"]
    nodes += [helper.make_node("Add", ["q", "k"], ["s"], name="add1"),
              helper.make_node("Add", ["s", "v"], ["y"], name="add2")]
    inits = [builders.weight(f"W{n}", (d, d), i) for i, n in enumerate("0qkv")]
    return builders.make(nodes, [builders.vi("x", ["N", d])], [builders.vi("y", ["N", d])], inits)


@pytest.mark.parametrize("sequential", [False, True])
def test_an_input_shared_by_layers_is_copied_once_per_batch(sequential, saved, fake):
    path, data = saved(_qkv(), n=24, seed=1)
    res = convert(path, None, calib=data, progress=False, device="cuda", batch_size=8,
                  sparsity=0.5, allocate="uniform", sequential=sequential, sequential_groups=2 if sequential else None)
    assert len(res.report.layers) == 4
    capture = sum(n for s, n in sites(("h2d",)).items() if "onnx_obc/collect.py" in s)
    # per batch (3) x and h once each, not once per layer; sequential (groups fc, q | k, v):
    # the second group's h, of the compressed and of the dense model, once each
    assert capture == 3 * (4 if sequential else 2)


@pytest.mark.parametrize("options", [dict(sparsity=0.5, allocate="uniform"),
                                     dict(sparsity=0.6, allocate="dp"), dict(bits=4)],
                         ids=["solve", "dp-levels", "obq"])
def test_layers_narrower_than_the_device_minimum_are_solved_on_the_host(options, saved, fake,
                                                                          monkeypatch):
    """A real GPU solves narrow layers slower than the host (docs/numerics.md, "GPU"): below the
    backend's min_columns the solve and the DP's level tables run on NumPy, with the same
    output as the device run; the capture stays on the device."""
    import dataclasses

    from onnx_obc import backend as backend_mod

    spec = MLP  # layer inputs d = 16 and 32
    on_device = _run(saved, spec, options, "cuda")
    monkeypatch.setitem(backend_mod._STAND_IN, fc.ndarray,
                        dataclasses.replace(fake, min_columns=32))  # the 16-wide one: host
    fc.reset()
    routed = _run(saved, spec, options, "cuda")
    a, b = _inits(on_device.model), _inits(routed.model)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [x.loss for x in routed.report.layers] == [x.loss for x in on_device.report.layers]
    solver = [s for s in sites() if "onnx_obc/solvers/" in s]
    assert solver, "the 32-wide layer is still solved on the device"
    assert routed.report.device.endswith("1 of 2 layers (those under 32 inputs) solved on the "
                                         "host, which is faster for them")
    assert on_device.report.device == "fake (fake device (NumPy behind a boundary))"
    capture = sum(n for s, n in sites(TRANSFERS).items() if "onnx_obc/collect.py" in s)
    seq = routed.report.config["run"]["sequential"]  # obq: the default, + the dense h
    assert capture == (9 if seq else 6)  # 3 batches x 2 layers: the Hessians on the device
    monkeypatch.setitem(backend_mod._STAND_IN, fc.ndarray,
                        dataclasses.replace(fake, min_columns=10**6))
    from onnx_obc import costplan

    planned_on, make_plan = [], costplan.make_plan
    monkeypatch.setattr(costplan, "make_plan",
                        lambda layers, cfg, xp, *a, **k: planned_on.append(xp) or make_plan(
                            layers, cfg, xp, *a, **k))
    fc.reset()
    host = _run(saved, spec, options, "cuda")
    assert not [s for s in sites() if "onnx_obc/solvers/" in s]  # no layer on the device
    assert planned_on == [np]  # the plan's rates are the host's, where every layer runs
    for k, v in _inits(host.model).items():
        np.testing.assert_array_equal(a[k], v, err_msg=k)


def test_for_width_picks_the_host_below_min_columns(fake):
    import dataclasses

    from onnx_obc.backend import get_backend

    cpu = get_backend("cpu")
    assert cpu.for_width(10) is cpu and fake.for_width(1) is fake  # a stand-in: every layer
    dev = dataclasses.replace(fake, min_columns=64)
    assert dev.for_width(64) is dev and dev.for_width(63).name == "numpy"
    x = dev.to_device(np.arange(3.0))
    back = dev.for_width(8).to_device(x)  # a device array onto the host backend: copied back
    assert type(back) is np.ndarray and back.tolist() == [0.0, 1.0, 2.0]
