"""The part of a model that differs from a dense one, and the dense tensors it reads.

A model built from the dense one by changing a few layers (`--sensitivity`'s candidates:
one layer deployed, its weights and Q/DQ nodes, the rest as it was) computes what the dense
model does up to the first node it changes. `Differ(dense).piece(model)` finds the nodes that
can compute something else, whatever order the export left them in: a node is changed when
no dense node makes its outputs from the same op, attributes and inputs, or when it reads a
changed tensor (an initializer the dense model lacks or holds other values in, a changed
node's output); changed nodes' outputs are changed. The piece is the changed nodes, in the
model's order; it reads the dense values of the unchanged tensors it needs (`crossing`:
graph inputs, or intermediate tensors fetched from a dense run) and makes the changed graph
outputs; the others are the dense model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper

from .capture import capture_session, session
from .segments import piece, reads


@dataclass(frozen=True)
class Piece:
    nodes: tuple[onnx.NodeProto, ...]  # the changed nodes, in the model's order
    crossing: tuple[str, ...]  # unchanged tensors they read (not initializers)
    outputs: tuple[str, ...]  # graph outputs they make (the others: the dense values)


def _signature(node: onnx.NodeProto) -> bytes:
    """What a node computes from its inputs, named: everything but its name and doc."""
    n = onnx.NodeProto()
    n.CopyFrom(node)
    n.ClearField("name")
    n.ClearField("doc_string")
    return n.SerializeToString(deterministic=True)


def _same_tensor(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    if (a.data_type, list(a.dims), a.data_location) != (b.data_type, list(b.dims),
                                                        b.data_location):
        return False
    if a.data_location == onnx.TensorProto.EXTERNAL:
        return ([(e.key, e.value) for e in a.external_data]
                == [(e.key, e.value) for e in b.external_data])
    if a.HasField("raw_data") or b.HasField("raw_data"):
        return a.raw_data == b.raw_data
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


class Differ:
    """The dense model's nodes by output and its initializers, to diff models against."""

    def __init__(self, dense: onnx.ModelProto) -> None:
        g = dense.graph
        self.made = {o: n for n in g.node for o in n.output if o}
        self.inits = {t.name: t for t in g.initializer}
        self.inputs = {i.name for i in g.input} - set(self.inits)
        self._sig: dict[int, bytes] = {}

    def _dense_sig(self, node: onnx.NodeProto) -> bytes:
        key = id(node)
        if key not in self._sig:
            self._sig[key] = _signature(node)
        return self._sig[key]

    def piece(self, model: onnx.ModelProto) -> Piece:
        """The nodes of `model` (topologically sorted) that may compute other values than
        the dense model's, the dense tensors they read and the graph outputs they make."""
        g = model.graph
        inits = {t.name for t in g.initializer}
        changed = {t.name for t in g.initializer
                   if t.name not in self.inits or not _same_tensor(t, self.inits[t.name])}
        changed |= {i.name for i in g.input if i.name not in inits and i.name not in self.inputs}
        nodes = []
        for n in g.node:
            outs = [o for o in n.output if o]
            twin = self.made.get(outs[0]) if outs else None
            same = (twin is not None and not (reads(n) & changed)
                    and self._dense_sig(twin) == _signature(n))
            if not same:
                nodes.append(n)
                changed.update(outs)
        read = set().union(*(reads(n) for n in nodes)) if nodes else set()
        crossing = sorted(read - changed - inits)
        outputs = tuple(o.name for o in g.output if o.name in changed)
        return Piece(tuple(nodes), tuple(crossing), outputs)


class DenseRuns:
    """The dense model's run of a batch, its graph outputs and the `fetched` tensors (the
    ones a chunk of pieces reads), once a batch for all of them: a session for
    verify.evaluate, whose other sessions (PieceRun) read the same batch's values."""

    def __init__(self, dense: onnx.ModelProto, fetched: list[str], outputs: list[str],
                 runtime: Any) -> None:
        self.sess = (capture_session(dense, fetched, runtime, optimize=True) if fetched
                     else session(dense, runtime, optimize=True))
        self.names = [o.name for o in self.sess.get_outputs()]
        self.outputs = set(outputs)
        self.feed: dict | None = None
        self.values: dict[str, Any] = {}

    def get_outputs(self) -> list[Any]:
        """The graph's outputs (not the fetched tensors)."""
        return [o for o in self.sess.get_outputs() if o.name in self.outputs]

    def of(self, feed: dict) -> dict[str, Any]:
        """The feed and the dense values made from it (one run a feed)."""
        if feed is not self.feed:
            self.values = {**feed, **dict(zip(self.names, self.sess.run(self.names, feed)))}
            self.feed = feed
        return self.values

    def run(self, names: list[str], feed: dict) -> list[Any]:
        v = self.of(feed)
        return [v[n] for n in names]


class PieceRun:
    """A model run as its piece on the dense run's tensors (`dense`, set before the first
    run): the graph outputs it changes from the piece, the others the dense ones. The piece
    is copied out of the model (the model need not be kept) and its session built at once,
    the crossing tensors typed by `types` (inference's element types); where one is not
    known, on the first batch, from their values."""

    def __init__(self, model: onnx.ModelProto, cut: Piece, outputs: set[str], runtime: Any,
                 types: dict[str, int]) -> None:
        self.crossing, self.runtime = cut.crossing, runtime
        self.outs = [o for o in cut.outputs if o in outputs]
        self.dense: DenseRuns | None = None
        self.sess: Any = None
        self.proto = piece(model, list(cut.nodes), {}, self.outs) if self.outs else None
        self.nbytes = self.proto.ByteSize() if self.proto is not None else 0
        if self.proto is not None and all(n in types for n in self.crossing):
            self._build({n: types[n] for n in self.crossing})

    def _build(self, types: dict[str, int]) -> None:
        self.proto.graph.input.extend(helper.make_tensor_value_info(n, t, None)
                                      for n, t in types.items())
        self.sess = session(self.proto, self.runtime, optimize=True, arena=False)
        self.proto = None

    def run(self, names: list[str], feed: dict) -> list[Any]:
        if self.dense is None:
            raise RuntimeError("PieceRun.dense is set before a run")
        v = self.dense.of(feed)
        made: dict[str, Any] = {}
        if self.outs:
            ins = {n: v[n] for n in self.crossing}
            if self.sess is None:
                self._build({n: helper.np_dtype_to_tensor_dtype(x.dtype)
                             for n, x in ins.items()})
            made = dict(zip(self.outs, self.sess.run(self.outs, ins)))
        return [made[n] if n in made else v[n] for n in names]
