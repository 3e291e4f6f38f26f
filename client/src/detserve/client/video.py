"""Video files and cameras in, annotated videos out, through OpenCV (the optional ``[video]`` extra).

OpenCV is imported inside the functions that need it: the base client stays small, and a missing OpenCV
is one clear error naming the extra to install.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidInput

__all__ = ["VIDEO_EXTENSIONS", "VideoUnavailable", "Frame", "VideoReader", "VideoSink", "is_video"]

#: Container extensions read as videos (OpenCV's FFmpeg backend reads them all).
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".ts", ".3gp", ".asf", ".m2ts"})

DEFAULT_FPS = 25.0  # when a container or camera does not say (OpenCV reports 0)


class VideoUnavailable(RuntimeError):
    """OpenCV is not installed."""


def is_video(name: str) -> bool:
    return Path(name.split("?", 1)[0]).suffix.lower() in VIDEO_EXTENSIONS


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise VideoUnavailable("videos and cameras need OpenCV: pip install 'detserve-client[video]'") from exc
    return cv2


@dataclass(frozen=True)
class Frame:
    index: int  # in the source, counting the frames skipped by the stride
    timestamp: float  # seconds: index / fps for files, since opening for cameras
    pixels: np.ndarray  # HxWx3 uint8 RGB


def _open(cv2, target: str | int, timeout: float | None):
    """``cv2.VideoCapture(target)``; with ``timeout`` (seconds), FFmpeg's open and read timeouts set to it
    (OpenCV's defaults are 30 s each) where this OpenCV has them (4.6+)."""
    if timeout is None or isinstance(target, int) or not hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
        return cv2.VideoCapture(target)
    ms = max(1, round(timeout * 1000))
    return cv2.VideoCapture(target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])


class VideoReader:
    """The frames of a video file, URL or camera (an int index), RGB, every ``stride``-th, at most ``max_frames``."""

    def __init__(self, target: str | int, *, max_frames: int | None = None, stride: int = 1,
                 timeout: float | None = None):
        cv2 = _cv2()
        self.target, self.max_frames, self.stride = target, max_frames, max(1, stride)
        self.camera = isinstance(target, int)
        self._capture = _open(cv2, target, timeout)
        if not self._capture.isOpened():
            self._capture.release()
            what = f"camera {target}" if self.camera else f"video {target}"
            raise InvalidInput(f"cannot open {what}" + (" (no such device, or it is busy)" if self.camera else
                                                        " (missing, not a video, or a codec OpenCV lacks)"))
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if fps > 0 else DEFAULT_FPS
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.source_frames = count if count > 0 and not self.camera else None

    @property
    def expected_frames(self) -> int | None:
        """How many frames iteration yields, if known (files: from the container's count)."""
        if self.source_frames is None:
            return self.max_frames
        count = -(-self.source_frames // self.stride)
        return count if self.max_frames is None else min(count, self.max_frames)

    def __iter__(self) -> Iterator[Frame]:
        cv2 = _cv2()
        started, index, yielded = time.monotonic(), 0, 0
        try:
            while self.max_frames is None or yielded < self.max_frames:
                ok, bgr = self._capture.read()
                if not ok:
                    return
                timestamp = time.monotonic() - started if self.camera else index / self.fps
                yield Frame(index, timestamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                yielded += 1
                for _ in range(self.stride - 1):  # grab() skips a frame without decoding it
                    index += 1
                    if not self._capture.grab():
                        return
                index += 1
        finally:
            self.close()

    def close(self) -> None:
        self._capture.release()


class VideoSink:
    """An mp4 (mp4v) written frame by frame from RGB images; opened on the first frame (its size)."""

    def __init__(self, path: Path | str, fps: float):
        self.path, self.fps, self._writer, self.frames = Path(path), fps, None, 0

    def write(self, rgb: np.ndarray) -> None:
        cv2 = _cv2()
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            height, width = rgb.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self._writer.isOpened():
                raise OSError(f"cannot write video {self.path} (OpenCV has no mp4v encoder?)")
        self._writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
