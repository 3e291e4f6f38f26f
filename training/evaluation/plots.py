"""Precision-recall curves and a grid of test images with ground truth and predicted boxes.

Figures are made with ``matplotlib.figure.Figure`` and its Agg canvas directly, never pyplot, so
nothing depends on (or changes) the process-wide backend and no GUI is ever touched. Sizes are
fixed (no tight bounding box) so a PNG's pixel size is ``figsize * dpi``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GT_COLOR = "#00c000"
PRED_COLOR = "#ff2020"
PR_FIGSIZE = (6.0, 4.5)
DPI = 100
CELL_INCHES = 4.0


@dataclass
class GridSample:
    """One image for the grid: boxes normalised (ymin, xmin, ymax, xmax), classes label-map ids."""

    filename: str
    image: np.ndarray  # uint8 [H, W, 3]
    gt_boxes: np.ndarray
    gt_class_ids: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_class_ids: np.ndarray


def safe_filename(name: str) -> str:
    """A class name usable in a file name on any OS."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"


def _new_figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def plot_pr_curve(
    recall_thresholds: np.ndarray,
    precision: np.ndarray | None,
    class_name: str,
    ap50: float | None,
    path: Path | str,
) -> Path:
    """COCO's interpolated precision at IoU .50 against its 101 recall thresholds (600x450 PNG)."""
    figure = _new_figure(PR_FIGSIZE)
    axes = figure.add_subplot(1, 1, 1)
    ap_text = "n/a" if ap50 is None else f"{ap50:.4f}"
    axes.set_title(f"{class_name}: AP@.50 IoU = {ap_text}")
    if precision is None:
        # No ground truth of this class in the evaluated images: there is no curve to draw.
        axes.text(0.5, 0.5, "no ground truth for this class", ha="center", va="center", transform=axes.transAxes)
    else:
        # pycocotools leaves 0 where a recall level is never reached; those points are drawn at 0.
        axes.step(recall_thresholds, np.clip(precision, 0.0, 1.0), where="pre", color="tab:blue")
        # "pre": COCO's precision at threshold r_i holds for recall in (r_(i-1), r_i].
        axes.fill_between(recall_thresholds, np.clip(precision, 0.0, 1.0), step="pre", alpha=0.15)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision (interpolated)")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.02)
    axes.grid(True, alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def _draw_boxes(axes, boxes: np.ndarray, height: int, width: int, color: str, labels: Sequence[str] | None, linestyle: str) -> None:
    from matplotlib.patches import Rectangle

    for index, (ymin, xmin, ymax, xmax) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        x0, y0 = xmin * width, ymin * height
        axes.add_patch(
            Rectangle((x0, y0), (xmax - xmin) * width, (ymax - ymin) * height,
                      fill=False, edgecolor=color, linewidth=1.8, linestyle=linestyle)
        )
        if labels is not None:
            axes.text(x0, y0, labels[index], color="white", fontsize=7, va="bottom", ha="left",
                      bbox={"facecolor": color, "alpha": 0.8, "pad": 1.0, "edgecolor": "none"}, clip_on=True)


def plot_detection_grid(
    samples: Sequence[GridSample],
    label_map: Mapping[int, str],
    path: Path | str,
    score_threshold: float = 0.3,
    columns: int = 3,
) -> Path:
    """Images in a grid (CELL_INCHES * DPI pixels per cell): ground truth dashed green, predictions
    with score >= ``score_threshold`` red and labelled "class score"."""
    if not samples:
        raise ValueError("no images to draw")
    columns = max(1, min(columns, len(samples)))
    rows = math.ceil(len(samples) / columns)
    figure = _new_figure((columns * CELL_INCHES, rows * CELL_INCHES))
    height_inches = rows * CELL_INCHES
    # Fixed room in inches (caption 0.1 from the top, axes from 0.6) whatever the number of rows.
    figure.suptitle(f"green dashed: ground truth    red: predictions with score >= {score_threshold:.2f}",
                    fontsize=10, y=1 - 0.1 / height_inches, va="top")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.6 / height_inches, wspace=0.04, hspace=0.12)
    for index, sample in enumerate(samples):
        axes = figure.add_subplot(rows, columns, index + 1)
        height, width = sample.image.shape[:2]
        axes.imshow(sample.image)
        _draw_boxes(axes, sample.gt_boxes, height, width, GT_COLOR, None, "--")
        keep = np.asarray(sample.det_scores).reshape(-1) >= score_threshold
        det_boxes = np.asarray(sample.det_boxes).reshape(-1, 4)[keep]
        labels = [
            f"{label_map.get(int(c), str(int(c)))} {s:.2f}"
            for c, s in zip(np.asarray(sample.det_class_ids).reshape(-1)[keep],
                            np.asarray(sample.det_scores).reshape(-1)[keep], strict=True)
        ]
        _draw_boxes(axes, det_boxes, height, width, PRED_COLOR, labels, "-")
        title = sample.filename if len(sample.filename) <= 40 else "..." + sample.filename[-37:]
        axes.set_title(title, fontsize=8)
        axes.set_xlim(0, width)
        axes.set_ylim(height, 0)
        axes.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
