"""Image sizes read from the header bytes of every format TensorFlow's ``decode_image`` decodes; nothing decoded.

The server checks ``--max-image-pixels`` on encoded images before the graph decodes them. The formats and their
magic bytes are those of DecodeImageV2's ``ClassifyFileFormat`` (TensorFlow 2.21: JPEG, PNG, GIF, BMP, WebP and
JPEG XL), and each size is read where that decoder reads it, so the size checked is the size TensorFlow would
allocate. No image library is used: PIL's WebP plugin reserves the whole canvas when it opens a file (2 GB of
address space for a 38-byte 16383x16383 WebP), and PIL's own decompression-bomb limit would raise its own error.
"""

from __future__ import annotations

from dataclasses import dataclass


class HeaderError(ValueError):
    """Bytes with an image format's magic whose header cannot be read (the message says why)."""


class UncheckableFormat(ValueError):
    """A format TensorFlow decodes but whose size this module cannot read: refused, as it cannot be bounded."""


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int
    frames: int = 1
    frame_pixels: int = 0  # GIF: the frames' own sizes, which may exceed the screen's

    @property
    def pixels(self) -> int:
        """What the limit is checked against: the decoded image's pixels, or for a GIF, giflib's rasters of every
        frame (DGifSlurp decodes them all, at 1 byte per pixel, before TensorFlow keeps the first of them) in
        RGB-pixel equivalents, whichever is larger."""
        return max(self.width * self.height, -(-self.frame_pixels // 3))

    def describe(self) -> str:
        size = f"{self.width}x{self.height}"
        return f"{size} {self.format} of {self.frames} frames" if self.frames > 1 else f"{size} image"


def _le(data: bytes, start: int, length: int) -> int:
    return int.from_bytes(data[start:start + length], "little")


def _be(data: bytes, start: int, length: int) -> int:
    return int.from_bytes(data[start:start + length], "big")


def _need(data: bytes, length: int, what: str) -> None:
    if len(data) < length:
        raise HeaderError(f"truncated: the {what} needs {length} bytes")


# JPEG: libjpeg reads marker segments up to the frame header (SOF0-SOF15, not DHT/JPG/DAC), which holds the size.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


def _jpeg(data: bytes) -> ImageHeader:
    pos = 2
    while True:
        # libjpeg's next_marker: bytes up to the next FF are skipped (a warning, not an error), FF fill bytes
        # swallowed, and FF 00 (a stuffed zero) is garbage too; reading it any other way checks another SOF.
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0:
                raise HeaderError("ends before the frame header (SOF)")
            while pos < len(data) and data[pos] == 0xFF:
                pos += 1
            if pos >= len(data):
                raise HeaderError("ends before the frame header (SOF)")
            if data[pos] != 0x00:
                break
            pos += 1
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):
            raise HeaderError("no frame header (SOF) before the image data")
        _need(data, pos + 2, "marker segment length")
        length = _be(data, pos, 2)
        if marker in _SOF_MARKERS:
            _need(data, pos + 7, "frame header (SOF)")
            height, width = _be(data, pos + 3, 2), _be(data, pos + 5, 2)
            if not width or not height:
                raise HeaderError(f"the frame header gives a size of {width}x{height}")
            return ImageHeader("JPEG", width, height)
        if length < 2:
            raise HeaderError(f"marker segment length {length} at byte {pos}")
        pos += length


def _png(data: bytes) -> ImageHeader:
    _need(data, 24, "IHDR chunk")
    if data[12:16] != b"IHDR":
        raise HeaderError("the first chunk is not IHDR")
    return ImageHeader("PNG", _be(data, 16, 4), _be(data, 20, 4))


def _gif(data: bytes) -> ImageHeader:
    """The logical screen, and every image descriptor: giflib's DGifSlurp allocates each frame before TensorFlow
    sees any, so the blocks are walked (their sub-blocks skipped, nothing decompressed)."""
    _need(data, 13, "logical screen descriptor")
    width, height = _le(data, 6, 2), _le(data, 8, 2)
    pos = 13 + (3 * (2 << (data[10] & 7)) if data[10] & 0x80 else 0)
    frames = frame_pixels = 0

    def skip_sub_blocks(pos: int) -> int:
        while True:
            if pos >= len(data):
                raise HeaderError("ends inside a data block")
            size = data[pos]
            pos += 1 + size
            if size == 0:
                return pos

    while True:
        if pos >= len(data):
            if frames:  # giflib stops at the end of the data as at the trailer
                break
            raise HeaderError("ends before the trailer")
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = skip_sub_blocks(pos + 2)
        elif block == 0x2C:  # image descriptor
            _need(data, pos + 10, "image descriptor")
            frames += 1
            frame_pixels += _le(data, pos + 5, 2) * _le(data, pos + 7, 2)
            flags = data[pos + 9]
            pos += 10 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0) + 1  # + local colours, LZW code size
            pos = skip_sub_blocks(pos)
        else:
            raise HeaderError(f"unknown block 0x{block:02x} at byte {pos}")
    if frames == 0:
        raise HeaderError("no image in the file")
    return ImageHeader("GIF", width, height, frames, frame_pixels)


# BMP: TensorFlow reads width and height (int32) at bytes 18 and 22 of any "BM" data of 32 bytes or more, and
# decodes it only if its length is exactly header + rows (so it refuses a truncated one itself). "BM" data is taken
# for a BMP if it has a BMP's DIB header size at byte 14, or if TensorFlow would decode it: not a text input
# ("BMW ..."), which must not be refused as a corrupt image.
_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def _is_bmp(data: bytes) -> bool:
    if len(data) >= 18 and _le(data, 14, 4) in _DIB_HEADER_SIZES:
        return True
    if len(data) < 32:
        return False
    width, height = int.from_bytes(data[18:22], "little", signed=True), int.from_bytes(data[22:26], "little",
                                                                                         signed=True)
    channels = _le(data, 28, 2) // 8
    row = (channels * width + 3) // 4 * 4
    return width > 0 and channels in (1, 3, 4) and len(data) == _le(data, 10, 4) + row * abs(height)


def _bmp(data: bytes) -> ImageHeader:
    _need(data, 32, "header")
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = abs(int.from_bytes(data[22:26], "little", signed=True))
    if width <= 0 or height == 0:
        raise HeaderError(f"the header gives a size of {width}x{height}")
    return ImageHeader("BMP", width, height)


# WebP: the RIFF container's first chunk: lossy (VP8), lossless (VP8L) or extended (VP8X, the canvas size).
def _webp(data: bytes) -> ImageHeader:
    _need(data, 20, "RIFF header")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        _need(data, 30, "VP8 frame header")
        if data[23:26] != b"\x9d\x01\x2a":
            raise HeaderError("no VP8 start code")
        return ImageHeader("WEBP", _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF)
    if chunk == b"VP8L":
        _need(data, 25, "VP8L header")
        if data[20] != 0x2F:
            raise HeaderError("no VP8L signature")
        bits = _le(data, 21, 4)
        return ImageHeader("WEBP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        _need(data, 30, "VP8X header")
        return ImageHeader("WEBP", _le(data, 24, 3) + 1, _le(data, 27, 3) + 1)
    raise HeaderError(f"unknown first chunk {chunk.decode('latin-1')!r}")


def _jpeg_xl(data: bytes) -> ImageHeader:
    raise UncheckableFormat("JPEG XL")


_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"

# (name, recognises, reads): in ClassifyFileFormat's order.
_FORMATS = (
    ("JPEG", lambda d: d.startswith(b"\xff\xd8\xff"), _jpeg),
    ("PNG", lambda d: d.startswith(b"\x89PNG\r\n\x1a\n"), _png),
    ("GIF", lambda d: d.startswith(b"GIF8"), _gif),
    ("BMP", lambda d: d.startswith(b"BM") and _is_bmp(d), _bmp),
    ("WEBP", lambda d: d.startswith(b"RIFF") and d[8:12] == b"WEBP", _webp),
    ("JPEG XL", lambda d: d.startswith((b"\xff\x0a", _JXL_CONTAINER)), _jpeg_xl),
)


def read_header(data: bytes) -> ImageHeader | None:
    """The image size ``data``'s header declares; None if ``data`` has no image magic. HeaderError when the
    header cannot be read, UncheckableFormat for a format whose size is not read here."""
    for name, recognises, reads in _FORMATS:
        if recognises(data):
            try:
                return reads(data)
            except HeaderError as error:
                raise HeaderError(f"{name} header unreadable ({len(data)} bytes): {error}") from None
    return None

