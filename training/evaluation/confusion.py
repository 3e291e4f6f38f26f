"""Confusion matrix of a detector: the label map's classes plus background, at IoU 0.5.

Rows are the ground truth's class, columns the prediction's; the last row and column are "background".
Per image, only detections with score >= the score threshold count. They are matched to ground truth in two
passes, each in descending score order, each detection taking the unmatched ground-truth box it overlaps most
(IoU >= 0.5):

1. to ground truth of its own class (a correct detection: the diagonal), then
2. the detections left, to the ground truth left, of any class (a confusion: off the diagonal).

So a detection is only counted as a confusion when no same-class object explains it. What is still unmatched
after both passes is a detection on background (row ``background``) or a missed object (column
``background``); the background/background cell stays 0. Classes outside the label map are dropped, as the
COCO evaluator drops them; ``difficult`` objects count as ordinary ground truth (TFOD2's default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detserve.export.parity import iou

from .plots import DPI, new_figure

CONFUSION_IOU = 0.5
BACKGROUND = "background"
CONFUSION_FILENAME = "confusion_matrix.png"


@dataclass
class ConfusionMatrix:
    """Accumulates one image at a time; ``counts[row, column]`` with rows ground truth, columns predictions."""

    label_map: Mapping[int, str]
    score_threshold: float
    iou_threshold: float = CONFUSION_IOU
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._ids = sorted(int(i) for i in self.label_map)
        self._index = {class_id: index for index, class_id in enumerate(self._ids)}
        self.counts = np.zeros((len(self._ids) + 1, len(self._ids) + 1), dtype=np.int64)

    @property
    def labels(self) -> list[str]:
        """Row and column names: the classes in label-map id order, then background."""
        return [self.label_map[i] for i in self._ids] + [BACKGROUND]

    def add_image(self, gt_boxes: np.ndarray, gt_class_ids: np.ndarray, det_boxes: np.ndarray,
                  det_scores: np.ndarray, det_class_ids: np.ndarray) -> None:
        """One image's ground truth and detections; boxes normalised (ymin, xmin, ymax, xmax)."""
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        gt_classes = np.asarray(gt_class_ids).reshape(-1).astype(np.int64)
        det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
        det_scores = np.asarray(det_scores, np.float64).reshape(-1)
        det_classes = np.asarray(det_class_ids).reshape(-1).astype(np.int64)
        if len(gt_boxes) != len(gt_classes) or not len(det_boxes) == len(det_scores) == len(det_classes):
            raise ValueError(f"confusion matrix: {len(gt_boxes)} ground-truth boxes for {len(gt_classes)} classes, "
                             f"{len(det_boxes)} detection boxes for {len(det_scores)} scores and "
                             f"{len(det_classes)} classes")
        known_gt = np.isin(gt_classes, self._ids)
        gt_boxes, gt_classes = gt_boxes[known_gt], gt_classes[known_gt]
        keep = np.isin(det_classes, self._ids) & (det_scores >= self.score_threshold)
        order = np.argsort(-det_scores[keep], kind="stable")
        det_boxes, det_classes = det_boxes[keep][order], det_classes[keep][order]

        overlaps = np.array([iou(box, gt_boxes) for box in det_boxes]).reshape(len(det_boxes), len(gt_boxes))
        gt_free = np.ones(len(gt_boxes), dtype=bool)
        det_match = np.full(len(det_boxes), -1)
        for same_class in (True, False):
            for d in np.flatnonzero(det_match < 0):
                candidates = gt_free & (overlaps[d] >= self.iou_threshold)
                if same_class:
                    candidates &= gt_classes == det_classes[d]
                if candidates.any():
                    g = int(np.argmax(np.where(candidates, overlaps[d], -1.0)))
                    det_match[d], gt_free[g] = g, False
        background = len(self._ids)
        for d, g in enumerate(det_match):
            row = background if g < 0 else self._index[int(gt_classes[g])]
            self.counts[row, self._index[int(det_classes[d])]] += 1
        for g in np.flatnonzero(gt_free):
            self.counts[self._index[int(gt_classes[g])], background] += 1

    def document(self) -> dict[str, Any]:
        """What metrics.json holds under ``confusion_matrix``."""
        return {
            "labels": self.labels,
            "rows": "ground truth",
            "columns": "prediction",
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "counts": self.counts.tolist(),
        }


def plot_confusion_matrix(matrix: ConfusionMatrix, path: Path | str) -> Path:
    """The counts as a heat map with each cell's number; the PNG grows with the number of classes and the length
    of their names (so none is cut off)."""
    from matplotlib.ticker import MaxNLocator

    labels = matrix.labels
    counts = matrix.counts
    grid = max(3.0, 0.6 * len(labels))  # inches of cells
    margin = 0.7 + 0.055 * max(len(label) for label in labels)  # the names at 8 pt and the axis label
    width, height = margin + grid + 1.0, margin + grid + 0.5  # colour bar on the right, title on top
    figure = new_figure((width, height))
    # Axes placed in inches: cells, names and colour bar keep their size whatever the number of classes.
    axes = figure.add_axes((margin / width, margin / height, grid / width, grid / height))
    bar_axes = figure.add_axes(((margin + grid + 0.15) / width, margin / height, 0.2 / width, grid / height))
    image = axes.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, int(counts.max())), aspect="auto")
    figure.colorbar(image, cax=bar_axes).locator = MaxNLocator(integer=True)  # counts, not fractions
    threshold = counts.max() / 2
    for (row, column), value in np.ndenumerate(counts):
        axes.text(column, row, str(value), ha="center", va="center", fontsize=9,
                  color="white" if value > threshold else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title(f"confusion at IoU {matrix.iou_threshold:.2f}, score >= {matrix.score_threshold:.2f}", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
