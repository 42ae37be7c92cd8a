"""saturating_cpu reads /proc/cpuinfo's flags: an x86 CPU without VNNI (or AMX) saturates
onnxruntime's uint8 x int8 kernels; one with any of them or another architecture does not;
without /proc/cpuinfo numpy's CPU features tell, and where they cannot, it does not."""

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
])
def test_saturating_cpu_from_the_flags(monkeypatch, machine, text, saturates):
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    monkeypatch.setattr(cpu.Path, "read_text", lambda self, *a, **k: text)
    assert cpu.saturating_cpu() is saturates


@pytest.mark.parametrize("vnni, saturates", [(True, False), (False, True), (None, False)])
def test_without_proc_cpuinfo_numpy_s_features_tell(monkeypatch, vnni, saturates):
    def missing(self: Path, *a: object, **k: object) -> str:
        raise FileNotFoundError(self)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "AMD64")
    monkeypatch.setattr(cpu.Path, "read_text", missing)
    monkeypatch.setattr(cpu, "_numpy_vnni", lambda: vnni)
    assert cpu.saturating_cpu() is saturates


def test_numpy_s_features_agree_with_proc_cpuinfo_here():
    """On this machine, where /proc/cpuinfo exists (Linux x86), numpy's dispatch says the
    same about AVX-512 VNNI (the fallback reads the same hardware)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    vnni = cpu._numpy_vnni()
    if vnni is None or "avx_vnni" in flags and "avx512_vnni" not in flags:
        pytest.skip("numpy cannot tell, or AVX-VNNI alone (numpy does not name it)")
    assert vnni == ("avx512_vnni" in flags)
