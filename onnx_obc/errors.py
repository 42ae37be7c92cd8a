"""Errors raised by onnx-obc. Every message says what is wrong and how to fix it."""

from __future__ import annotations


class ObcError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(ObcError, ValueError):
    """An option has an invalid value or options contradict each other."""


class ModelError(ObcError):
    """The ONNX model cannot be read, used or written."""


class CalibrationError(ObcError):
    """Calibration data does not match the model."""


class NotPositiveDefinite(ObcError):
    """A layer Hessian stayed singular after all damping escalations."""


class DeviceError(ObcError):
    """The requested compute device is not available."""


class EngineError(ObcError):
    """A task failed on the engine's workers (after the engine's retries)."""
