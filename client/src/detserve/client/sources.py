"""What `detserve detect` reads: files, folders, globs, ``-`` (stdin), http(s) URLs, videos and cameras.

:func:`resolve` turns one command-line argument into :class:`Source` objects (a folder or a glob into its
files, sorted); :func:`read` yields the :class:`Item` objects (one image, or one video frame each) of a source,
lazily, so a folder or a video never sits in memory at once. Unreadable inputs raise
:class:`~detserve.client.errors.InvalidInput` naming the input; the caller decides to skip or to fail.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import urlparse

from .contract import MAX_MESSAGE_BYTES
from .errors import InvalidInput
from .images import LoadedImage, load_image
from .video import VideoReader, is_video

__all__ = ["Source", "Item", "resolve", "read", "IMAGE_EXTENSIONS", "MAX_DOWNLOAD_BYTES"]

#: What folders and globs pick up as images. Curated, not Pillow's every plugin (.h5, .grib, .eps, ...
#: are data or vector files users keep next to their photos); a file named on its own is read whatever it is.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# An image URL larger than a request may be is refused: the same cap as the server's (and the client's) messages.
MAX_DOWNLOAD_BYTES = MAX_MESSAGE_BYTES
STREAM_SCHEMES = ("rtsp", "rtmp")  # network streams, read by OpenCV

Kind = Literal["image", "stdin", "url", "video", "camera"]


@dataclass(frozen=True)
class Source:
    kind: Kind
    target: str  # the path, URL, "-" or camera index
    name: str  # how results and errors name it

    @property
    def stem(self) -> str:
        """A file-name stem for its annotated output."""
        if self.kind == "stdin":
            return "stdin"
        if self.kind == "camera":
            return f"camera{self.target}"
        path = urlparse(self.target).path if self.kind == "url" or "://" in self.target else self.target
        return Path(path).stem or "image"

    @property
    def is_stream(self) -> bool:
        """Frames (video file, stream or camera) rather than one image."""
        return self.kind in ("video", "camera")


@dataclass(frozen=True)
class Item:
    source: Source
    image: LoadedImage
    frame: int | None = None  # frame index (videos and cameras)
    timestamp: float | None = None  # seconds into the video (cameras: since opening)
    fps: float | None = None  # the rate annotated frames are written at
    position: int = 0  # the source's place in the run: the same video given twice is two outputs


def _from_path(path: str) -> Source:
    return Source("video" if is_video(path) else "image", path, path)


def _wanted(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS or is_video(name)


def _walk(folder: Path) -> list[Source]:
    # Recursive and sorted (os.walk order differs across file systems); hidden entries skipped like most tools.
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if _wanted(name):
                found.append(path)
    return [_from_path(path) for path in sorted(found)]


def resolve(argument: str) -> list[Source]:
    """The sources one command-line argument names (see the module docstring); ``[]`` for an empty folder.

    Precedence: ``-``; a URL; an existing path (folder, video by extension, else image); a glob when the path
    does not exist; an integer (a camera index); else an image path (which fails to read, by name).
    """
    if argument == "-":
        return [Source("stdin", "-", "<stdin>")]
    scheme = urlparse(argument).scheme.lower()
    if scheme in ("http", "https"):
        return [Source("video" if is_video(argument) else "url", argument, argument)]
    if scheme in STREAM_SCHEMES:
        return [Source("video", argument, argument)]
    path = Path(argument)
    if path.is_dir():
        return _walk(path)
    if path.exists():
        return [_from_path(argument)]
    if glob.has_magic(argument):
        matches = sorted(glob.glob(argument, recursive=True))
        if not matches:
            raise InvalidInput(f"no files match {argument!r}")
        found = [source for match in matches for source in (_walk(Path(match)) if os.path.isdir(match)
                                                           else [_from_path(match)] if _wanted(match) else [])]
        # `**` follows symlinked folders, so a link to a parent yields each file once per loop level: keep the
        # first (sorted) path of each real file.
        seen: set[str] = set()
        return [source for source in found
                if not (os.path.realpath(source.target) in seen or seen.add(os.path.realpath(source.target)))]
    if argument.isdigit():
        return [Source("camera", argument, f"camera {argument}")]
    return [_from_path(argument)]  # reading it names the missing file


def _download(url: str, timeout: float | None, limit: int) -> bytes:
    import requests

    try:
        with requests.get(url, timeout=timeout, stream=True, headers={"accept": "image/*"}) as reply:
            if reply.status_code != 200:
                raise InvalidInput(f"cannot fetch {url}: HTTP {reply.status_code} {reply.reason}")
            declared = reply.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise InvalidInput(f"cannot fetch {url}: {declared} bytes, more than the {limit}-byte limit")
            chunks, size = [], 0
            for chunk in reply.iter_content(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise InvalidInput(f"cannot fetch {url}: more than the {limit}-byte limit")
                chunks.append(chunk)
    except requests.RequestException as exc:
        raise InvalidInput(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from exc
    return b"".join(chunks)


def _named(image: LoadedImage, name: str) -> LoadedImage:
    image.source = name  # so the client's own errors name the URL / stdin, not "<bytes #0>"
    return image


def read(source: Source, *, stdin: BinaryIO | None = None, timeout: float | None = 30.0,
         max_frames: int | None = None, vid_stride: int = 1, max_bytes: int = MAX_DOWNLOAD_BYTES) -> Iterator[Item]:
    """The items of ``source``: one image, or its frames (every ``vid_stride``-th, at most ``max_frames``)."""
    if source.kind == "image":
        yield Item(source, load_image(source.target))
    elif source.kind == "stdin":
        if stdin is None:
            raise InvalidInput("no stdin to read '-' from")
        data = stdin.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise InvalidInput(f"<stdin>: more than the {max_bytes}-byte limit")
        if not data:
            raise InvalidInput("cannot read image <stdin>: empty input")
        yield Item(source, _named(load_image(data), source.name))
    elif source.kind == "url":
        yield Item(source, _named(load_image(_download(source.target, timeout, max_bytes)), source.name))
    else:
        reader = open_video(source, max_frames=max_frames, vid_stride=vid_stride, timeout=timeout)
        for frame in reader:
            image = _named(load_image(frame.pixels), f"{source.name} frame {frame.index}")
            # Annotated frames are written at fps / stride, so the output lasts as long as the input.
            yield Item(source, image, frame.index, frame.timestamp, reader.fps / reader.stride)


def open_video(source: Source, *, max_frames: int | None = None, vid_stride: int = 1,
               timeout: float | None = None) -> VideoReader:
    target: str | int = int(source.target) if source.kind == "camera" else source.target
    # --timeout bounds opening and each read of a URL or stream; local files and cameras need none.
    network = source.kind == "video" and "://" in source.target
    return VideoReader(target, max_frames=max_frames, stride=vid_stride, timeout=timeout if network else None)
