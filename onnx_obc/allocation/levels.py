"""Per-layer compression levels for non-uniform allocation, their labels and their costs.

A level is what one layer gets: a sparsity (unstructured or blocks), an N:M pattern, weight
bits, or a combination (pruning first, then OBQ on the survivors). Labels are what profiles
store and reports print:

    "fp32"   left dense, float weights      "0.5"     50% unstructured / block sparsity
    "w8"     8-bit weights                  "2:4"     2:4 sparsity, float weights
    "2:4+w4" 2:4 and 4-bit weights          "0.5+w8"  50% sparsity and 8-bit weights

Bit-operations (BOPs) of a layer per sample = MACs x density x weight bits x activation bits
(the usual definition: a b_w x b_a multiply-accumulate counts b_w * b_a bit-ops). Float
weights or activations count 32 bits; activations count `act_bits` only at levels whose
weights are quantized (those are the layers that get a Q/DQ on their input). The dense FP32
model is the reference: `--budget bops --target 32` asks for 1/32 of its BOPs, which is
e.g. every layer at 4-bit weights and 8-bit activations, or 2:4 with 8-bit weights.
(OBC's reference code prices a FLOP at 32 / speed-up instead: 8w8a = 8, 2:4+4w4a = 2, and
states reductions against "everything at 8w8a"; its numbers are not in these units.)

>>> Level.parse("2:4+w4"), Level.parse(0.5).label, Level.parse("fp32").is_dense
(Level(sparsity=0.0, nm=(2, 4), bits=4), '0.5', True)
>>> Level(nm=(2, 4), bits=8).bops_per_mac(act_bits=8)
32.0
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import ConfigError

_LABEL = re.compile(r"^(?:(?P<nm>\d+:\d+)|(?P<s>0(?:\.\d+)?|\.\d+))?(?:\+?w(?P<b>\d+))?$")


@dataclass(frozen=True)
class Level:
    sparsity: float = 0.0  # unstructured (or block) fraction of zeros
    nm: tuple[int, int] | None = None  # n zeros in every m
    bits: int | None = None  # weight bits (None: float)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"level sparsity must be in [0, 1), got {self.sparsity}")
        if self.nm is not None:
            n, m = self.nm
            if not 0 < n < m:
                raise ConfigError(f"level N:M needs 0 < N < M, got {n}:{m}")
            if self.sparsity:
                raise ConfigError("a level has either N:M or a sparsity, not both")
            object.__setattr__(self, "nm", (int(n), int(m)))
        if self.bits is not None and not 2 <= self.bits <= 8:
            raise ConfigError(f"level bits must be 2..8, got {self.bits}")
        object.__setattr__(self, "sparsity", float(self.sparsity))

    @property
    def is_dense(self) -> bool:
        return not self.sparsity and self.nm is None and self.bits is None

    @property
    def pruned(self) -> bool:
        return bool(self.sparsity) or self.nm is not None

    @property
    def density(self) -> float:
        if self.nm is not None:
            return 1.0 - self.nm[0] / self.nm[1]
        return 1.0 - self.sparsity

    @property
    def label(self) -> str:
        if self.is_dense:
            return "fp32"
        parts = []
        if self.nm is not None:
            parts.append(f"{self.nm[0]}:{self.nm[1]}")
        elif self.sparsity:
            parts.append(f"{self.sparsity:g}")
        if self.bits is not None:
            parts.append(f"w{self.bits}")
        return "+".join(parts)

    def bops_per_mac(self, act_bits: int | None) -> float:
        """Bit-operations per dense MAC of the layer at this level."""
        a = act_bits if (act_bits and self.bits is not None) else 32
        return self.density * (self.bits or 32) * a

    @classmethod
    def parse(cls, value: float | int | str) -> Level:
        """A level from a profile value: a sparsity number, or a label (see the module doc)."""
        if isinstance(value, bool):
            raise ConfigError(f"not a level: {value!r}")
        if isinstance(value, (int, float)):
            if not math.isfinite(value) or not 0.0 <= value < 1.0:
                raise ConfigError(f"level {value!r} is not a sparsity in [0, 1)")
            return cls(sparsity=float(value))
        text = str(value).strip().lower()
        if text in ("fp32", "dense"):
            return cls()
        m = _LABEL.match(text)
        if not text or m is None or not any(m.groupdict().values()):
            raise ConfigError(f"level {value!r} is not a sparsity (0.5) or a label like "
                              "'fp32', 'w8', '2:4', '2:4+w4', '0.5+w8'")
        nm = tuple(int(x) for x in m["nm"].split(":")) if m["nm"] else None
        return cls(sparsity=float(m["s"] or 0.0), nm=nm,
                   bits=int(m["b"]) if m["b"] else None)


def mixed_levels(bits: tuple[int, ...], nm: tuple[int, int] | None, nm_ok: bool
                 ) -> tuple[Level, ...]:
    """OBC's mixed database for one layer, dense first: fp32, w<b> for each b, and (when the
    layer's reduction axis divides by m) N:M alone and N:M + w<b>."""
    out = [Level()] + [Level(bits=b) for b in bits]
    if nm is not None and nm_ok:
        out += [Level(nm=nm)] + [Level(nm=nm, bits=b) for b in bits]
    return tuple(out)
