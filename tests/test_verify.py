"""verify: fidelity against the dense model, the same whether the sessions are held together
or two at a time (large models)."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnx_obc import calib, verify
from onnx_obc.capture import Runtime
from onnx_obc.export.values import apply_weights
from onnx_obc.layers import constant_weights, select_layers
from onnx_obc.specs import Selection

from . import builders as b


def test_two_sessions_at_a_time_give_the_same_fidelity(monkeypatch):
    model = b.mlp((8, 12, 4), seed=1)
    layers, _ = select_layers(model, Selection())
    rng = np.random.default_rng(0)
    weights = constant_weights(model.graph)
    other = {}
    for i, L in enumerate(layers):
        w = numpy_helper.to_array(weights[L.weight][1])
        other[L.weight] = w * (1 + 0.1 * (i + 1) * rng.standard_normal(w.shape)).astype(w.dtype)
    models = {"dense": model, "a": apply_weights(model, layers, other),
              "b": apply_weights(model, layers[:1], {layers[0].weight: other[layers[0].weight]})}
    sets = {"held-out": calib.DataSet(b.feeds(model, 40, seed=2), "feeds")}
    rt = Runtime(("CPUExecutionProvider",))
    together = verify.measure(models, sets, 16, rt)
    monkeypatch.setattr(verify, "ONE_AT_A_TIME", 0)
    apart = verify.measure(models, sets, 16, rt)
    assert apart["held-out"].keys() == together["held-out"].keys() == models.keys()
    for k in models:
        assert apart["held-out"][k].to_dict() == together["held-out"][k].to_dict()
    errs = [together["held-out"][k].rel_error for k in ("dense", "a", "b")]
    assert all(v == 0 for v in errs[0].values())
    assert all(v > 0 for e in errs[1:] for v in e.values())
