"""Loading dataset images and turning them into 8-bit RGB ``EncodedImage``s for tf.Examples.

EXIF orientation is deliberately NOT applied: VOC/COCO/YOLO boxes refer to the pixels as stored, and
TensorFlow's decode_jpeg (what TFOD2 trains on) ignores EXIF too. Transposing would misplace every box.
Images with an orientation tag are only noted in the report.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .tfrecord import EncodedImage

JPEG_QUALITY = 95
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageLoadError(Exception):
    """An image that cannot be used; ``kind`` is the report kind (image_missing / _unreadable / _corrupt)."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str  # PIL mode as opened: RGB, RGBA, L, P, I;16, ...
    format: str  # PIL format name: JPEG, PNG, ...
    bit_depth: int  # per channel; 16 for 16-bit PNGs even where PIL reports them as RGB
    exif_orientation: int  # 1 = as stored

    @property
    def conversion(self) -> str | None:
        """The report kind of the conversion this image needs to become 8-bit RGB, or None."""
        return conversion_kind(self.mode, self.bit_depth)


def conversion_kind(mode: str, bit_depth: int = 8) -> str | None:
    if mode.startswith("I") or mode == "F" or bit_depth > 8:
        return "image_16bit"
    if mode == "RGB":
        return None
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return "image_rgba"
    if mode in ("L", "1"):
        return "image_grayscale"
    if mode == "P":
        return "image_palette"
    if mode == "CMYK":
        return "image_cmyk"
    return "image_mode"


def _png_bit_depth(path: Path) -> int:
    # Pillow opens 16-bit RGB(A) PNGs as 8-bit "RGB"/"RGBA", so the IHDR bit depth is read directly.
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) == 25 and head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
        return head[24]
    return 8


def open_image(path: Path) -> Image.Image:
    """``Image.open`` (header only, pixels not decoded yet) raising ImageLoadError with the report kind."""
    try:
        return Image.open(path)
    except FileNotFoundError as e:
        raise ImageLoadError("image_missing", "no such file") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError("image_unreadable", "not an image format PIL can identify") from e
    except (IsADirectoryError, PermissionError) as e:
        raise ImageLoadError("image_unreadable", type(e).__name__) from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError("image_unreadable", str(e)) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError("image_corrupt", f"{type(e).__name__}: {e}") from e


def inspect_image(path: Path | str) -> ImageInfo:
    """Open and fully decode ``path`` (a truncated file only fails on decode); raises ImageLoadError."""
    path = Path(path)
    with open_image(path) as image:
        try:
            image.load()
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on bad data
            raise ImageLoadError("image_corrupt", f"{type(e).__name__}: {e}") from e
        bit_depth = _png_bit_depth(path) if image.format == "PNG" else 8
        orientation = int(image.getexif().get(0x0112, 1) or 1)
        return ImageInfo(image.width, image.height, image.mode, image.format or "", bit_depth, orientation)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    16-bit (and 32-bit int / float) grey is scaled 0..65535 -> 0..255; PIL's own convert("L") clips
    at 255, which would turn almost every 16-bit image white. Alpha is dropped rather than composited:
    that is what TensorFlow's decode_png(channels=3) and PIL's convert("RGB") do at inference time, so
    training sees the same pixels the served model will.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


def encode_image(path: Path | str, info: ImageInfo | None = None) -> EncodedImage:
    """The bytes to store in a tf.Example.

    An 8-bit RGB JPEG or PNG is stored byte for byte (re-encoding a JPEG would lose quality for
    nothing). Anything else is converted to 8-bit RGB and encoded as JPEG (quality 95) if it was a
    JPEG, else as lossless PNG.
    """
    path = Path(path)
    info = info or inspect_image(path)
    if info.conversion is None and info.format in ("JPEG", "PNG"):
        return EncodedImage(path.read_bytes(), info.format.lower(), info.width, info.height)
    with open_image(path) as image:
        rgb = to_rgb8(image)
        buffer = io.BytesIO()
        if info.format == "JPEG":
            rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
            fmt = "jpeg"
        else:
            rgb.save(buffer, format="PNG")
            fmt = "png"
        return EncodedImage(buffer.getvalue(), fmt, rgb.width, rgb.height)
