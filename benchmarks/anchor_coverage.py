"""How well SSD FPN-Lite's anchors fit a dataset's boxes, per anchor scale (docs/training.md, "Anchors fitted to
the boxes").

For each --scale, the anchors TFOD2 itself generates for the template's multiscale generator (levels 3-7, aspect
ratios 1, 2, 0.5, two scales per octave) at --image-size, and each training box's IoU with them: the share of
boxes with at least one anchor at IoU >= 0.5 (TFOD2's matched_threshold: the others get only the one forced
match), and the mean number of such anchors per box (the positives a box trains), overall and for boxes under 32
input pixels. No training: it shows why a scale helps before any is spent.

    .venv/bin/python benchmarks/anchor_coverage.py --data runs/facemask-data --scale 4 --scale 3 --scale 2
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import detserve.training.tfod_compat  # noqa: E402, F401, I001  (before TensorFlow and TFOD2)
from detserve.training.anchors import SMALLEST_STRIDE, fit_anchor_scale  # noqa: E402
from detserve.training.data.tfrecord import read_boxes, split_pattern  # noqa: E402
from detserve.training.pipeline_config import TEMPLATE, parse_pipeline_config  # noqa: E402

MATCHED_THRESHOLD = 0.5
SMALL_PIXELS = 32


def template_anchors(scale: float, image_size: int) -> np.ndarray:
    """Normalised (ymin, xmin, ymax, xmax) anchors of the template's generator with ``anchor_scale = scale``."""
    from importlib import resources

    from object_detection.builders import anchor_generator_builder

    config = parse_pipeline_config(resources.files("detserve.training").joinpath("templates", TEMPLATE).read_text())
    generator_config = config.model.ssd.anchor_generator
    generator_config.multiscale_anchor_generator.anchor_scale = scale
    generator = anchor_generator_builder.build(generator_config)
    levels = range(generator_config.multiscale_anchor_generator.min_level,
                   generator_config.multiscale_anchor_generator.max_level + 1)
    shapes = [(math.ceil(image_size / 2**level),) * 2 for level in levels]
    per_level = generator.generate(shapes, im_height=image_size, im_width=image_size)
    return np.concatenate([boxes.get().numpy() for boxes in per_level])


def iou(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    top_left = np.maximum(boxes[:, None, :2], anchors[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], anchors[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return intersection / (area(boxes)[:, None] + area(anchors)[None, :] - intersection)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a `detserve data` output directory")
    parser.add_argument("--split", default="train")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--scale", type=float, action="append", help="anchor scales to compare [4, 3, 2.5, 2, 1.5]")
    args = parser.parse_args()
    boxes = read_boxes(split_pattern(args.data, args.split))
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) * args.image_size
    small = sides < SMALL_PIXELS
    fit = fit_anchor_scale(boxes, args.image_size)
    print(f"{len(boxes)} {args.split} boxes of {args.data} at {args.image_size}x{args.image_size}: side (px) "
          f"p10 {np.percentile(sides, 10):.1f}, median {np.median(sides):.1f}, p90 {np.percentile(sides, 90):.1f}; "
          f"{small.mean():.0%} under {SMALL_PIXELS} px; fitted scale {fit.scale:g}")
    print(f"{'scale':>5} {'anchors':>7} {'smallest':>8}  {'boxes matched (IoU>=0.5)':>24}  {'positives/box':>13}  "
          f"{'small: matched':>14}  {'small: pos/box':>14}")
    for scale in args.scale or [4.0, 3.0, 2.5, 2.0, 1.5]:
        anchors = template_anchors(scale, args.image_size)
        positives = np.concatenate([(iou(chunk, anchors) >= MATCHED_THRESHOLD).sum(axis=1)
                                    for chunk in np.array_split(boxes, max(1, len(boxes) // 256))])
        print(f"{scale:>5g} {len(anchors):>7} {scale * SMALLEST_STRIDE:>6g}px  {(positives > 0).mean():>24.1%}  "
              f"{positives.mean():>13.2f}  {(positives[small] > 0).mean():>14.1%}  {positives[small].mean():>14.2f}")


if __name__ == "__main__":
    main()
