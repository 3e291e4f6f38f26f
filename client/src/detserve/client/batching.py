"""Images -> the payloads of Predict requests: resized to the model's input size, encoded, grouped (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .images import LoadedImage, ResizeMethod, encode_image, resize_bilinear

__all__ = ["ImageBatch", "batch_images"]


@dataclass(frozen=True)
class ImageBatch:
    """One Predict request: images ``indices`` of the call, as one batched input value."""

    indices: list[int]
    payload: np.ndarray | list[bytes]  # uint8 [B, H, W, 3] ("raw"), or JPEG/PNG bytes [B]


def batch_images(images: list[LoadedImage], encoding: str, size: tuple[int, int] | None, *,
                 resize_method: ResizeMethod, jpeg_quality: int, max_batch_size: int) -> list[ImageBatch]:
    """Requests of at most ``max_batch_size`` images each, in order. ``size`` (height, width): resize to it
    (None: as they are). ``encoding``: "raw" (uint8 pixels), "jpeg" or "png" (JPEG/PNG inputs as they are)."""

    def pixels(image: LoadedImage) -> np.ndarray:
        return resize_bilinear(image.pixels, size, resize_method) if size else image.pixels

    if encoding == "raw":
        arrays = [pixels(image) for image in images]
        batches, start = [], 0
        while start < len(arrays):  # consecutive images of equal shape share a request
            end = start + 1
            while end < len(arrays) and end - start < max_batch_size and arrays[end].shape == arrays[start].shape:
                end += 1
            batches.append(ImageBatch(list(range(start, end)), np.stack(arrays[start:end])))
            start = end
        return batches
    # JPEG/PNG as given: no decode, no re-encode.
    blobs = [image.encoded if image.encoded is not None else encode_image(pixels(image), encoding, jpeg_quality)
             for image in images]
    return [ImageBatch(list(range(start, min(start + max_batch_size, len(blobs)))),
                       blobs[start:start + max_batch_size]) for start in range(0, len(blobs), max_batch_size)]
