"""Anchor sizes fitted to a dataset's boxes.

SSD FPN-Lite places anchors of side ``anchor_scale * stride`` (and x sqrt(2), scales_per_octave 2) on FPN levels
3-7, strides 8-128: with the zoo's scale 4.0 the smallest is 32 input pixels. On face-mask-853 at 320x320 the
median face is 23 pixels and 68% are under 32, so most faces match no anchor at TFOD2's IoU 0.5 and get only the
one forced match. Fitting the scale so the smallest anchor sits at the small end of the data's boxes gives them
anchors of their size; the largest (scale * 181 px) still covers the image at 320 with scale 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ZOO_ANCHOR_SCALE = 4.0  # the zoo config's: kept for data whose boxes are large, and for a zoo detector's head
# Below 2 strides an anchor is smaller than the grid's spacing allows matching for: a box half a stride off the
# nearest anchor centre falls under IoU 0.5 with every anchor.
MIN_ANCHOR_SCALE = 2.0
SMALLEST_STRIDE = 8  # FPN level 3 (min_level in the template)
FIT_PERCENTILE = 10  # the smallest anchor is fitted to the 10th percentile of box sides
SCALE_STEP = 0.5  # fitted scales are rounded to this, so that similar data gives the same config


@dataclass(frozen=True)
class AnchorFit:
    scale: float
    boxes: int
    side_pixels: float  # the FIT_PERCENTILE-th percentile of sqrt(h * w) in input pixels (nan without boxes)
    image_size: int

    def describe(self) -> str:
        if not self.boxes:
            return f"anchor scale {self.scale:g} (the zoo's: no boxes to fit to)"
        return (f"anchor scale {self.scale:g} fitted to {self.boxes} training boxes: {FIT_PERCENTILE}% are under "
                f"{self.side_pixels:.1f} px at {self.image_size}x{self.image_size}; smallest anchor "
                f"{self.scale * SMALLEST_STRIDE:g} px (--anchor-scale to override)")


def fit_anchor_scale(boxes: np.ndarray, image_size: int) -> AnchorFit:
    """The anchor scale for normalised (ymin, xmin, ymax, xmax) ``boxes`` at a square ``image_size`` input: the
    smallest anchor at the FIT_PERCENTILE-th percentile box side, within [MIN_ANCHOR_SCALE, ZOO_ANCHOR_SCALE].
    A box's side is sqrt(height * width), as an anchor's is."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sides = np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0, None)) * image_size
    if not len(sides):
        return AnchorFit(ZOO_ANCHOR_SCALE, 0, float("nan"), image_size)
    side = float(np.percentile(sides, FIT_PERCENTILE))
    scale = float(np.clip(round(side / SMALLEST_STRIDE / SCALE_STEP) * SCALE_STEP, MIN_ANCHOR_SCALE, ZOO_ANCHOR_SCALE))
    return AnchorFit(scale, len(sides), side, image_size)


def fit_anchor_scale_to_split(data_dir: Path | str, split: str, image_size: int) -> AnchorFit:
    """fit_anchor_scale on the boxes of ``split``'s TFRecords in ``data_dir`` (the zoo's scale when there are
    none: a config rendered before conversion; `detserve train` refuses such data before it gets here)."""
    import glob

    from .data.tfrecord import read_boxes, split_pattern

    pattern = split_pattern(data_dir, split)
    if not glob.glob(pattern):
        return fit_anchor_scale(np.zeros((0, 4)), image_size)
    return fit_anchor_scale(read_boxes(pattern), image_size)
