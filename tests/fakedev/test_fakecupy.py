"""The fake device is as strict as CuPy where it matters (no implicit conversion to NumPy, no
host operands), counts what crosses, and plugs in only through onnx_obc/backend.py."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_obc.backend import array_module, cholesky, get_backend, to_numpy

from . import fakecupy as fc


@pytest.mark.parametrize("convert", [np.asarray, np.array, lambda a: np.asarray(list(a))])
def test_implicit_conversion_to_numpy_raises_like_cupy(convert):
    a = fc.asarray(np.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        convert(a)


def test_a_non_scalar_does_not_become_a_number():
    with pytest.raises(TypeError):
        float(fc.ones(3))
    with pytest.raises(TypeError):
        int(fc.ones((2, 2)))
    with pytest.raises(ValueError):  # ambiguous truth value, as in NumPy and CuPy
        bool(fc.ones(2))


@pytest.mark.parametrize("op", [lambda a, h: a + h, lambda a, h: h * a, lambda a, h: a @ h.T,
                                lambda a, h: fc.where(a > 0, h, 0.0),
                                lambda a, h: fc.take_along_axis(a, h.astype(int), axis=1),
                                lambda a, h: np.maximum(h, a)])
def test_host_array_operands_raise(op):
    a, h = fc.asarray(np.ones((2, 3))), np.ones((2, 3))
    with pytest.raises(TypeError, match="Unsupported type"):
        op(a, h)


def test_scalars_reductions_and_numpy_functions_stay_on_the_device(fake):
    a = fc.asarray(np.arange(6.0).reshape(2, 3))
    s = a.sum()
    assert isinstance(s, fc.ndarray) and s.shape == ()  # a 0-d device array, not a float
    assert isinstance(np.maximum(a, 1.0), fc.ndarray)  # __array_ufunc__ -> the fake module
    assert isinstance(np.linalg.inv(fc.eye(3)), fc.ndarray)  # __array_function__ likewise
    b = a * np.float32(2) + 1  # NumPy scalars are scalars, as in CuPy
    assert fc.COUNTS == {"h2d": 1}
    assert float(s) == 15.0 and bool((b > 0).all()) and int(a.argmax()) == 5
    assert fc.COUNTS["sync"] == 3
    np.testing.assert_array_equal(b.get(), np.arange(6.0).reshape(2, 3) * 2 + 1)
    assert fc.COUNTS["d2h"] == 1


def test_hidden_copies_are_counted(fake):
    a = fc.zeros((4, 3))
    a[np.array([0, 2])] = 1.0  # host index: CuPy copies it to the device
    a[1] = np.ones(3)  # host value, likewise
    rows = a[a[:, 0] > 0]  # a mask read: the shape depends on the data
    assert fc.COUNTS["h2d_implicit"] == 2 and fc.COUNTS["sync"] == 1 and rows.shape == (3, 3)


def test_cholesky_of_a_non_spd_matrix_is_nan_as_in_cusolver_and_the_backend_raises(fake):
    bad = fc.asarray(np.array([[1.0, 2.0], [2.0, 1.0]]))
    assert bool(fc.isnan(fc.linalg.cholesky(bad)).all())
    with pytest.raises(np.linalg.LinAlgError):
        cholesky(bad)


def test_the_backend_module_is_the_one_door(fake):
    a = fake.to_device(np.ones(3))
    assert array_module(a) is fc and array_module(np.ones(3), a) is fc
    assert isinstance(to_numpy(a), np.ndarray)
    assert get_backend("cuda") is fake and get_backend("auto") is fake
    assert get_backend("cpu").name == "numpy"
    assert fake.device_label.startswith("fake (") and fake.free_bytes() > 0
    fake.sync()
    assert fc.COUNTS == {"h2d": 1, "d2h": 1, "sync": 1}


def test_outside_the_block_the_fake_is_not_a_device():
    from onnx_obc.backend import stand_in_device

    with stand_in_device("fake", fc, fc.ndarray):
        pass
    assert array_module(fc.zeros(2)) is np
    assert get_backend("cpu").name == "numpy"
