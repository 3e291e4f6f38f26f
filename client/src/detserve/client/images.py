"""Image inputs: loading, TensorFlow-exact bilinear resizing and encoding (numpy + Pillow, no TensorFlow).

``detect()`` accepts a path, encoded bytes (JPEG/PNG/...), a PIL image or a numpy array. Encoded
inputs are not decoded unless the request needs pixels; their size is read from the header.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from .errors import InvalidInput

__all__ = ["ImageInput", "LoadedImage", "load_image", "resize_bilinear", "encode_image", "ResizeMethod"]

ImageInput = Any  # str | os.PathLike | bytes | PIL.Image.Image | np.ndarray
ResizeMethod = Literal["bilinear", "bilinear_legacy"]

#: Formats sent to the server as they are (the in-graph decoder reads them).
PASSTHROUGH_FORMATS = {"JPEG": "jpeg", "PNG": "png"}


@dataclass
class LoadedImage:
    """One input image: its original size, and its pixels and/or encoded bytes."""

    width: int
    height: int
    source: str
    encoded: bytes | None = None  # original JPEG/PNG bytes (sent as they are when encoding allows)
    encoded_format: str | None = None  # "jpeg" | "png"
    _pixels: np.ndarray | None = field(default=None, repr=False)

    @property
    def pixels(self) -> np.ndarray:
        """HxWx3 uint8 RGB (decoded from ``encoded`` on first use)."""
        if self._pixels is None:
            assert self.encoded is not None
            self._pixels = _decode(self.encoded, self.source)
        return self._pixels

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the original image."""
        return self.width, self.height


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode == "I;16" or image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit / float grayscale: scale to 8 bits as TF's decode_png(dtype=uint8) does for 16-bit.
        array = np.asarray(image, dtype=np.float64)
        array = np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(array[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def _decode(data: bytes, source: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return _to_rgb_array(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"cannot decode image {source}: {exc}") from exc


def _from_bytes(data: bytes, source: str) -> LoadedImage:
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            fmt = image.format
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"cannot read image {source}: {exc}") from exc
    if fmt in PASSTHROUGH_FORMATS:
        return LoadedImage(width, height, source, encoded=data, encoded_format=PASSTHROUGH_FORMATS[fmt])
    # Other formats (BMP, WebP, TIFF, ...): decoded here, re-encoded if the request needs bytes.
    return LoadedImage(width, height, source, _pixels=_decode(data, source))


def _from_array(array: np.ndarray, source: str) -> LoadedImage:
    if array.dtype != np.uint8:
        raise InvalidInput(f"{source}: expected a uint8 array (RGB, 0-255), got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInput(f"{source}: expected an HxWx3 RGB array, got shape {tuple(array.shape)}")
    array = np.ascontiguousarray(array)
    return LoadedImage(int(array.shape[1]), int(array.shape[0]), source, _pixels=array)


def load_image(image: ImageInput, index: int = 0) -> LoadedImage:
    """A path, encoded bytes, a PIL image or an HxWx3 uint8 RGB numpy array -> :class:`LoadedImage`.

    Grayscale and RGBA inputs become RGB. EXIF orientation is not applied (TensorFlow's decoders
    ignore it too, so the server sees the same pixels).
    """
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read image {path}: {exc.strerror or exc}") from exc
        return _from_bytes(data, str(path))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(image), f"<bytes #{index}>")
    if isinstance(image, Image.Image):
        return _from_array(_to_rgb_array(image), f"<PIL image #{index}>")
    if isinstance(image, np.ndarray):
        return _from_array(image, f"<array #{index}>")
    raise InvalidInput(f"unsupported image type {type(image).__name__}: "
                       "expected a path, bytes, a PIL image or a numpy array")


def _interpolation(out_size: int, in_size: int, method: ResizeMethod):
    # TensorFlow's compute_interpolation_weights (resize_bilinear_op.cc), in float32.
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.arange(out_size, dtype=np.float32)
    if method == "bilinear":  # HalfPixelScaler: tf.image.resize / TF2
        coord = (index + np.float32(0.5)) * scale - np.float32(0.5)
    elif method == "bilinear_legacy":  # LegacyScaler: tf.compat.v1.image.resize_bilinear, TFOD2's resizer
        coord = index * scale
    else:
        raise ValueError(f"unknown resize method {method!r}: 'bilinear' or 'bilinear_legacy'")
    floor = np.floor(coord)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(coord), in_size - 1).astype(np.intp)
    lerp = (coord - floor).astype(np.float32)
    return lower, upper, lerp


def resize_bilinear(pixels: np.ndarray, size: tuple[int, int], method: ResizeMethod = "bilinear_legacy",
                    *, dtype=np.uint8) -> np.ndarray:
    """Resize HxWxC ``pixels`` to ``size`` = (height, width) exactly as TensorFlow's ResizeBilinear does.

    ``method="bilinear"`` is ``tf.image.resize(..., "bilinear", antialias=False)`` (half-pixel centres);
    ``"bilinear_legacy"`` is ``tf.compat.v1.image.resize_bilinear(align_corners=False)``, which TFOD2's
    ``fixed_shape_resizer`` uses. The arithmetic is TensorFlow's, in float32; with ``dtype=np.uint8``
    the result is rounded to the nearest integer (at most 0.5 from the float result the graph would
    compute from the original image). Returns the input unchanged when it already has ``size``.
    """
    out_h, out_w = size
    in_h, in_w = pixels.shape[:2]
    if (in_h, in_w) == (out_h, out_w):
        return pixels if dtype is None or pixels.dtype == dtype else pixels.astype(dtype)
    y0, y1, ylerp = _interpolation(out_h, in_h, method)
    x0, x1, xlerp = _interpolation(out_w, in_w, method)
    top_rows, bottom_rows = pixels[y0], pixels[y1]  # gather rows first: cheap on uint8
    xl = xlerp[None, :, None]
    f32 = np.float32
    top_left, top_right = top_rows[:, x0].astype(f32), top_rows[:, x1].astype(f32)
    bottom_left, bottom_right = bottom_rows[:, x0].astype(f32), bottom_rows[:, x1].astype(f32)
    top = top_left + (top_right - top_left) * xl
    bottom = bottom_left + (bottom_right - bottom_left) * xl
    out = top + (bottom - top) * ylerp[:, None, None]
    if dtype is None or np.issubdtype(dtype, np.floating):
        return out if dtype is None else out.astype(dtype)
    return np.clip(np.rint(out), 0, 255).astype(dtype)


def encode_image(pixels: np.ndarray, fmt: str = "jpeg", jpeg_quality: int = 95) -> bytes:
    """HxWx3 uint8 -> JPEG or PNG bytes."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, "RGB")
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    elif fmt == "png":
        image.save(buffer, format="PNG", compress_level=1)
    else:
        raise ValueError(f"unknown image encoding {fmt!r}: 'jpeg' or 'png'")
    return buffer.getvalue()
