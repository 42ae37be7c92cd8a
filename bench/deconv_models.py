"""Three models of the shapes users bring ConvTransposes in, built with torch (random
weights, BatchNorm statistics randomized; torch from the `.[models]` extra): a DCGAN
generator (four 4x4 ConvTransposes), an FSRCNN-like x3 super-resolver (a 9x9 stride-3
ConvTranspose with output padding) and a small U-Net (three 2x2 stride-2 up-samplers), each
exported with the TorchScript and the dynamo exporter, with 96 smooth calibration inputs
and 64 held out: OUT/{gen,sr,unet}_{ts,dyn}.onnx and OUT/{name}.{calib,eval}.npz. docs/models.md
"ConvTranspose layers" converts them with the CLI; bench/deconv_deploy.py times them.

    python bench/deconv_models.py OUT
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/deconv")
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)


def block(i: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                         nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.e1, self.e2, self.e3 = block(3, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.b = block(4 * c, 8 * c)
        self.u3, self.d3 = nn.ConvTranspose2d(8 * c, 4 * c, 2, 2), block(8 * c, 4 * c)
        self.u2, self.d2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, 2), block(4 * c, 2 * c)
        self.u1, self.d1 = nn.ConvTranspose2d(2 * c, c, 2, 2), block(2 * c, c)
        self.out = nn.Conv2d(c, 2, 1)
        self.p = nn.MaxPool2d(2)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(self.p(e1))
        e3 = self.e3(self.p(e2))
        b = self.b(self.p(e3))
        d3 = self.d3(torch.cat([self.u3(b), e3], 1))
        d2 = self.d2(torch.cat([self.u2(d3), e2], 1))
        return self.out(self.d1(torch.cat([self.u1(d2), e1], 1)))


class Gen(nn.Module):  # DCGAN's generator
    def __init__(self, z: int = 64, c: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z, 4 * c, 4, 1, 0, bias=False), nn.BatchNorm2d(4 * c), nn.ReLU(),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c),
            nn.ReLU(), nn.ConvTranspose2d(2 * c, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c),
            nn.ReLU(), nn.ConvTranspose2d(c, 3, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, x):
        return self.net(x)


class SR(nn.Module):  # FSRCNN-like x3: a 9x9 stride-3 ConvTranspose with output padding
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 56, 5, padding=2), nn.PReLU(56),
                               nn.Conv2d(56, 12, 1), nn.PReLU(12),
                               nn.Conv2d(12, 12, 3, padding=1), nn.PReLU(12),
                               nn.Conv2d(12, 56, 1), nn.PReLU(56))
        self.up = nn.ConvTranspose2d(56, 1, 9, stride=3, padding=4, output_padding=2)

    def forward(self, x):
        return self.up(self.f(x))


def randomize_bn(m: nn.Module) -> None:
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)


SPECS = {"unet": (UNet(), (1, 3, 64, 64)), "gen": (Gen(), (1, 64, 1, 1)),  # built in this
         "sr": (SR(), (1, 1, 32, 32))}  # order, first: docs/models.md's figures are of these
rng = np.random.default_rng(0)
for name, (m, shape) in SPECS.items():
    randomize_bn(m)
    m.eval()
    x = torch.randn(*shape)
    for dyn in (False, True):
        path = str(OUT / f"{name}_{'dyn' if dyn else 'ts'}.onnx")
        torch.onnx.export(m, (x,), path, dynamo=dyn, input_names=["x"], output_names=["y"],
                          dynamic_axes=None if dyn else {"x": {0: "n"}, "y": {0: "n"}},
                          dynamic_shapes=({0: torch.export.Dim("n", min=1, max=1024)},)
                          if dyn else None, opset_version=18 if dyn else 17)
    if name == "gen":  # latent vectors
        cal = rng.standard_normal((96, 64, 1, 1)).astype(np.float32)
        ev = rng.standard_normal((64, 64, 1, 1)).astype(np.float32)
    else:  # smooth images: 8x8 blocks plus a little noise (correlated, as photos are)
        c, h = shape[1], shape[2]

        def smooth(k: int) -> np.ndarray:
            a = rng.standard_normal((k, c, h // 8, h // 8)).astype(np.float32)
            return np.kron(a, np.ones((1, 1, 8, 8), np.float32)) + 0.1 * rng.standard_normal(
                (k, c, h, h)).astype(np.float32)
        cal, ev = smooth(96), smooth(64)
    np.savez(OUT / f"{name}.calib.npz", x=cal)
    np.savez(OUT / f"{name}.eval.npz", x=ev)
    print(name, sum(p.numel() for p in m.parameters()), "parameters")
