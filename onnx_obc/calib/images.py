"""Calibration images and the preprocessing that turns a file into model input.

`--calib-preprocess` takes either a spec of comma-separated settings or a user function:

    resize=224        shorter side to 224, aspect kept   resize=224x320  exactly H x W
    crop=224          centre crop (or HxW) after resize  scale=255       pixels / scale first
    mean=0.485:0.456:0.406, std=0.229:0.224:0.225        per channel, after the scaling
    layout=nchw|nhwc  color=rgb|bgr|gray                 (default: read from the model input)

    module:function or path/to/file.py:function          called with each file's path; returns
                                                         one sample (array) or {input: array}

Without resize, an image keeps its size when the model's H and W are symbolic, and is
resized to them when they are fixed. Integer model inputs (uint8 images) get the raw pixels.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CalibrationError
from .layout import InputSpec, Layout, fixed

IMAGE_FILES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


@dataclass(frozen=True)
class Preprocess:
    resize: tuple[int, ...] | None = None  # (side,) shorter side, or (H, W)
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float = 255.0
    layout: str | None = None  # "nchw" / "nhwc"; None: from the model input
    color: str | None = None  # "rgb" / "bgr" / "gray"; None: from the channel count
    function: str | None = None  # "module:function"

    @classmethod
    def parse(cls, text: str | None) -> Preprocess:
        """The settings of `text`; ValueError saying what is wrong."""
        text = (text or "").strip()
        if text and "=" not in text:
            mod, sep, fn = text.rpartition(":")
            if not sep or not mod or not fn.isidentifier():
                raise ValueError(f"{text!r} is neither settings (resize=224,mean=...) nor "
                                 "module:function")
            return cls(function=text)
        kw: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not sep or key not in ("resize", "crop", "mean", "std", "scale", "layout", "color"):
                raise ValueError(f"unknown preprocessing setting {part!r}; known: resize, crop, "
                                 "mean, std, scale, layout, color")
            try:
                if key in ("resize", "crop"):
                    size = tuple(int(v) for v in value.lower().split("x"))
                    if not 1 <= len(size) <= 2 or min(size) < 1:
                        raise ValueError
                    kw[key] = size if key == "resize" or len(size) == 2 else size * 2
                elif key in ("mean", "std"):
                    kw[key] = tuple(float(v) for v in value.split(":"))
                elif key == "scale":
                    kw[key] = float(value)
                else:
                    kw[key] = value.lower()
            except ValueError:
                raise ValueError(f"bad value in {part!r}: resize/crop take N or HxW, mean/std "
                                 "take values separated by ':' (0.485:0.456:0.406), scale a "
                                 "number") from None
        if kw.get("layout", "nchw") not in ("nchw", "nhwc"):
            raise ValueError(f"layout must be nchw or nhwc, got {kw['layout']!r}")
        if kw.get("color", "rgb") not in ("rgb", "bgr", "gray"):
            raise ValueError(f"color must be rgb, bgr or gray, got {kw['color']!r}")
        if kw.get("std") and min(abs(v) for v in kw["std"]) == 0 or kw.get("scale", 1) == 0:
            raise ValueError("std and scale must not be 0")
        return cls(**kw)

    def accepts(self, filename: str) -> bool:
        """Files of a directory this preprocessing reads (a function reads every file)."""
        return self.function is not None or filename.lower().endswith(IMAGE_FILES)


def reader(pre: Preprocess, layout: Layout) -> Callable[[str], dict[str, np.ndarray]]:
    """A function reading one file into {input name: one sample}."""
    if pre.function is not None:
        fn = _resolve(pre.function)

        def call(path: str) -> dict[str, np.ndarray]:
            out = fn(path)
            if isinstance(out, dict):
                return out
            if len(layout.specs) != 1:
                raise CalibrationError(f"{pre.function} returned one array for {path!r} but the "
                                       f"model has inputs {layout.names}; return a dict")
            return {layout.specs[0].name: np.asarray(out)}
        return call
    spec = layout.specs[0]
    if len(layout.specs) != 1 or len(spec.shape) != 4 or layout.axis[spec.name] is None:
        def refuse(path: str) -> dict[str, np.ndarray]:
            raise CalibrationError(
                f"images ({path!r}) feed a model with one input of rank 4 (NCHW or NHWC); this "
                f"one has {[(s.name, s.shape) for s in layout.specs]}. Read the files with "
                "--calib-preprocess module:function instead")
        return refuse
    return lambda path: {spec.name: load_image(path, pre, spec, layout.axis[spec.name])}


def load_image(path: str, pre: Preprocess, spec: InputSpec, axis: int) -> np.ndarray:
    """One image as model input [1, C, H, W] or [1, H, W, C] (sample axis `axis`)."""
    from PIL import Image

    nhwc = (pre.layout or _layout(spec)) == "nhwc"
    c_dim, hw = (spec.shape[3], spec.shape[1:3]) if nhwc else (spec.shape[1], spec.shape[2:4])
    color = pre.color or ("gray" if c_dim == 1 else "rgb")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if color == "gray" else "RGB")
            size = pre.resize or (tuple(hw) if all(fixed(d) for d in hw) else None)
            if size is not None:
                im = im.resize(_target(im.size, size), Image.BILINEAR)
            if pre.crop is not None:
                im = _centre_crop(im, pre.crop, path)
            a = np.asarray(im)
    except CalibrationError:
        raise
    except Exception as exc:
        raise CalibrationError(f"cannot read image {path!r} ({exc})") from None
    a = a[..., None] if a.ndim == 2 else (a[..., ::-1] if color == "bgr" else a)
    if spec.dtype.kind == "f":
        a = a.astype(np.float32) / np.float32(pre.scale)
        for name, v in (("mean", pre.mean), ("std", pre.std)):
            if v is not None and len(v) not in (1, a.shape[-1]):
                raise CalibrationError(f"--calib-preprocess {name} has {len(v)} values for "
                                       f"{a.shape[-1]} channels")
        if pre.mean is not None:
            a = a - np.asarray(pre.mean, np.float32)
        if pre.std is not None:
            a = a / np.asarray(pre.std, np.float32)
    a = a if nhwc else a.transpose(2, 0, 1)
    return np.expand_dims(a.astype(spec.dtype), axis)


def _layout(spec: InputSpec) -> str:
    s = spec.shape
    return "nhwc" if s[3] in (1, 3, 4) and s[1] not in (1, 3, 4) else "nchw"


def _target(wh: tuple[int, int], size: tuple[int, ...]) -> tuple[int, int]:
    """PIL (width, height) for `size`: (H, W) exactly, or (side,) for the shorter side."""
    if len(size) == 2:
        return size[1], size[0]
    w, h = wh
    s = size[0]
    return (s, max(1, round(h * s / w))) if w <= h else (max(1, round(w * s / h)), s)


def _centre_crop(im: Any, crop: tuple[int, int], path: str) -> Any:
    w, h = im.size
    ch, cw = crop
    if ch > h or cw > w:
        raise CalibrationError(f"image {path!r} is {h}x{w} after resizing, smaller than the "
                               f"crop {ch}x{cw}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return im.crop((left, top, left + cw, top + ch))


def _resolve(ref: str) -> Callable[[str], Any]:
    """`module:function` or `file.py:function` (the current directory is importable)."""
    mod_name, _, fn_name = ref.rpartition(":")
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            spec = importlib.util.spec_from_file_location("onnx_obc_user_preprocess", mod_name)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {mod_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            added = os.getcwd() not in sys.path
            if added:
                sys.path.insert(0, os.getcwd())
            try:
                module = importlib.import_module(mod_name)
            finally:
                if added:
                    sys.path.remove(os.getcwd())
    except Exception as exc:
        raise CalibrationError(f"cannot import the preprocessing module of {ref!r} "
                               f"({type(exc).__name__}: {exc})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise CalibrationError(f"{mod_name} has no function {fn_name!r} (from --calib-preprocess "
                               f"{ref})")
    return fn
