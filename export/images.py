"""The images an export runs: verification samples (the evaluation split, else synthetic) and their encoding.

Nothing here imports TensorFlow at module level: the verification process (plain TensorFlow) uses
``encode_image`` too.
"""

from __future__ import annotations

import io

import numpy as np

NUM_SAMPLES = 4
FALLBACK_INPUT_SIZE = (320, 320)  # when the model's input size is unknown


def encode_image(image: np.ndarray, image_format: str = "PNG") -> bytes:
    """uint8 [H, W, 3] -> PNG (lossless: decodes to the same pixels) or JPEG (quality 90) bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def synthetic_samples(count: int = NUM_SAMPLES) -> list[np.ndarray]:
    """Deterministic test images (noise, bright rectangles and disks) in two sizes."""
    rng = np.random.default_rng(0)
    images = []
    for index in range(count):
        height, width = (240, 320) if index % 2 == 0 else (300, 260)
        image = rng.integers(40, 120, (height, width, 3), dtype=np.uint8)
        for _ in range(3):
            y, x = int(rng.integers(0, height - 60)), int(rng.integers(0, width - 60))
            h, w = int(rng.integers(30, 60)), int(rng.integers(30, 60))
            image[y:y + h, x:x + w] = rng.integers(150, 256, 3, dtype=np.uint8)
        images.append(image)
    return images


def with_resized_copies(images: list[np.ndarray], size: tuple[int, int] | None) -> list[np.ndarray]:
    """``images`` and copies resized to the model's input size (320x320 if unknown): what clients send, and
    equal-size images for the batch-parity check (see detserve.export.parity.parity_rows)."""
    from PIL import Image

    height, width = size or FALLBACK_INPUT_SIZE
    return list(images) + [np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
                           for image in images if image.shape[:2] != (height, width)]


def sample_images(eval_pattern: str | None, count: int = NUM_SAMPLES) -> tuple[list[np.ndarray], str]:
    """Up to ``count`` images of the evaluation split (real inputs give real detections), else synthetic ones;
    and a description of them for the progress messages."""
    if eval_pattern:
        import tensorflow as tf

        if tf.io.gfile.glob(eval_pattern):
            from detserve.training.data.tfrecord import read_examples

            images = []
            for example in read_examples(eval_pattern):
                images.append(example.image)
                if len(images) == count:
                    break
            if len(images) == count:
                return images, f"{len(images)} images of {eval_pattern}"
            if images:  # too few for a batch of distinct images: topped up
                extra = count - len(images)
                return images + synthetic_samples(extra), f"{len(images)} images of {eval_pattern} and {extra} synthetic"
    return synthetic_samples(count), f"{count} synthetic images"
