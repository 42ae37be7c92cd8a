"""The onnxruntime target's float stem: with 8-bit activations, the first layers of an image
model are candidates to stay float.

  - a Conv that reads a model input through no other layer (Pad, Cast, a normalisation...)
    or through stem Convs alone (itself included: Basic Pitch's CQT runs one lowpass weight
    on every octave, then one filter bank on each), on every use, and sees at most
    STEM_CHANNELS input channels per group (an image's 1-4, audio's 1), or any number where
    every model input it reaches is a signal (float, rank <= 3: DNSMOS frames its waveform
    into 320 samples, the STFT's input channels), whose 8-bit grid loses the quiet parts;
  - a depthwise Conv (one input channel per group) on at most DEPTHWISE_CHANNELS channels
    whose input comes from those stem Convs alone (through their BN / activation).

On x86 (onnxruntime 1.31, one thread) these run slower as QLinearConv than as onnxruntime's
float Conv with its activation fused: PP-LCNet's 3->16 stem 328 vs 147 us and its
16-channel depthwise 186 vs 85 us at 112x112, EfficientNet-Lite0's 393 vs 213 and 229 vs
154 us (the integer kernels run channels-last and vectorise over channels, which few
channels leave idle), and quantizing the image itself costs accuracy: PP-LCNet's output
error 0.032 -> 0.017 and 0.98x -> 0.83x fp32 with both float (docs/deployment.md "A float stem").
Keeping them float needs no Q/DQ in front (the model input is float) and one Q after, where
the first integer layer reads them. These are candidates: floatcheck.py keeps them float
where the run's verification gives an output error at most 2% above the quantized stem's
(on the PP-OCRv4 recognizer it does not: 1.6 text points fewer over 2,000 lines with them
float, and a higher calibration error).
ExportOptions.float_stem = False (--int8-stem) quantizes them like every other layer.
"""

from __future__ import annotations

import onnx

from ..layers import Layer, node_label

STEM_CHANNELS = 4  # input channels per group of a stem Conv
DEPTHWISE_CHANNELS = 32  # channels of a depthwise Conv kept float after the stem
MARGIN = 0.02  # kept float unless the error with them float is more than this above
SLOWER = 1.05  # ... or the latency more than this times the quantized stem's: a float stem
# leaves what follows it on uint8 in NCHW (PP-OCRv6's detector: its stem MaxPool on the
# codes 4.3 ms against 0.3 in fp32, where a quantized stem puts it in onnxruntime's NHWC
# region)
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # layers, selected or not
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
FEW = ("so few channels gain little or nothing on its integer kernels and quantizing the "
       "input costs accuracy")
SIGNAL = ("it reads a signal (a float model input of rank <= 3: audio, a sensor stream), "
          "whose 8-bit grid loses its quiet parts")


def _upstream(tensor: str, producers: dict[str, tuple[str, onnx.NodeProto]],
              layer_nodes: dict[str, str], inputs: set[str]) -> tuple[set[str], set[str]]:
    """(weights of the layers first met walking back from `tensor`, the model inputs
    reached without passing one). A Conv / Gemm / MatMul that is not a selected layer (one
    --exclude left, say) stops the walk too, met as its node label."""
    met: set[str] = set()
    reached: set[str] = set()
    seen: set[str] = set()
    todo = [tensor]
    while todo:
        t = todo.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        if t in inputs:
            reached.add(t)
            continue
        if t not in producers:  # an initializer
            continue
        label, node = producers[t]
        if label in layer_nodes or node.op_type in COMPUTE_OPS:
            met.add(layer_nodes.get(label, f"node {label}"))
            continue
        todo.extend(node.input)
    return met, reached


def stem_layers(proto: onnx.ModelProto, layers: list[Layer]) -> dict[str, str]:
    """weight -> why its layer may stay float (the stem Convs and the depthwise Convs after
    them; see the module docstring)."""
    g = proto.graph
    producers = {o: (node_label(n, i), n) for i, n in enumerate(g.node) for o in n.output}
    inits = {t.name for t in g.initializer}
    inputs = {i.name for i in g.input if i.name not in inits}
    signals = {i.name for i in g.input if i.name in inputs and len(
        i.type.tensor_type.shape.dim) <= 3 and i.type.tensor_type.elem_type in FLOATS}
    layer_nodes = {u.node: L.weight for L in layers for u in L.uses}
    convs = [L for L in layers if L.op == "Conv"]
    walks = {L.weight: [_upstream(u.input, producers, layer_nodes, inputs) for u in L.uses]
             for L in convs}
    out: dict[str, str] = {}
    grew = True
    while grew:  # a stem may read other stems, or itself (a weight on every octave)
        grew = False
        for L in convs:
            reached = set().union(*(r for _, r in walks[L.weight]))
            signal = bool(reached) and reached <= signals  # then any number of channels
            if (L.weight in out or not reached  # on some use through no other layer
                    or (L.shape[1] > STEM_CHANNELS and not signal)
                    or not all(met <= set(out) | {L.weight} for met, _ in walks[L.weight])):
                continue
            grew = True
            out[L.weight] = (f"stem conv on the model input ({L.shape[1]} input channel"
                             f"{'s' if L.shape[1] > 1 else ''}"
                             f"{' per group' if L.uses[0].group > 1 else ''}), kept float for "
                             "onnxruntime: " + (SIGNAL if signal and L.shape[1] > STEM_CHANNELS
                                                else FEW) + " (--int8-stem quantizes it)")
    stems = set(out)
    for L in convs:
        channels = L.shape[0]
        if (L.weight in out or L.shape[1] != 1 or L.uses[0].group != channels
                or channels > DEPTHWISE_CHANNELS):
            continue
        mets = [met for met, _ in walks[L.weight]]
        if all(met and met <= stems for met in mets):
            out[L.weight] = (
                f"depthwise conv on {channels} channels after the float stem, kept float for "
                "onnxruntime: so few channels gain little or nothing on its integer kernels "
                "(--int8-stem quantizes it)")
    return out
