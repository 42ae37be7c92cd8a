"""A pytest plugin that stands the fake device in for CuPy for the whole session, so the GPU
tests run without a GPU (checking the tests themselves, not CuPy):

    python -m pytest -p tests.fakedev.plugin -m gpu tests/test_gpu.py
"""

from __future__ import annotations

from onnx_obc.backend import stand_in_device

from . import fakecupy

_HELD: list = []


def pytest_configure(config) -> None:
    ctx = stand_in_device("fake", fakecupy, fakecupy.ndarray)
    ctx.__enter__()
    _HELD.append(ctx)


def pytest_unconfigure(config) -> None:
    while _HELD:
        _HELD.pop().__exit__(None, None, None)
