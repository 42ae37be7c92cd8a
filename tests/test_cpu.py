"""saturating_cpu reads /proc/cpuinfo's flags: an x86 CPU without VNNI (or AMX) saturates
onnxruntime's uint8 x int8 kernels; one with any of them, another architecture, or no
/proc/cpuinfo does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_obc import cpu

AVX2 = "processor : 0\nflags : fpu sse2 avx avx2 fma\n"


@pytest.mark.parametrize("machine, text, saturates", [
    ("x86_64", AVX2, True),
    ("x86_64", AVX2.replace("avx2", "avx2 avx512f avx512_vnni"), False),
    ("x86_64", AVX2.replace("avx2", "avx2 avx_vnni"), False),
    ("AMD64", AVX2.replace("avx2", "avx2 amx_int8"), False),
    ("aarch64", "Features : fp asimd\n", False),
    ("x86_64", None, False),  # no /proc/cpuinfo: cannot tell
])
def test_saturating_cpu_from_the_flags(monkeypatch, machine, text, saturates):
    def read_text(self: Path, *a: object, **k: object) -> str:
        if text is None:
            raise FileNotFoundError(self)
        return text
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    monkeypatch.setattr(cpu.Path, "read_text", read_text)
    assert cpu.saturating_cpu() is saturates
