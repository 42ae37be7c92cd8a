"""The run options that say how calibration files are read (a base of specs.RunOptions,
kept apart so specs.py stays small; validated by calib/ on construction)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class CalibReading:
    """calib_preprocess: how the files of a --calib directory become input ("resize=224,
    mean=...,std=...,layout=nchw" or "module:function", calib/images.py);
    calib_sample_axes: "INPUT=AXIS|none,..." overrides the sample axes read from the model
    (calib/layout.py); token_mask: "auto", "none" or the input marking padded positions
    (calib/tokens.py)."""

    calib_preprocess: str | None = None
    calib_sample_axes: str | None = None
    token_mask: str = "auto"

    def _check_calib(self) -> None:
        if not isinstance(self.token_mask, str) or not self.token_mask:
            raise ConfigError("run.token_mask must be \"auto\", \"none\" or an input's name, "
                              f"got {self.token_mask!r}")
        from .calib.images import Preprocess
        from .calib.layout import parse_axes
        for name, parse in (("calib_preprocess", Preprocess.parse),
                            ("calib_sample_axes", parse_axes)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"run.{name} must be a string, got {value!r}")
            try:
                parse(value)
            except ValueError as exc:
                raise ConfigError(f"run.{name}: {exc}") from None
