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

# One colour per class, indexed by label-map id (ids start at 1; the palette repeats after 10 classes):
# matplotlib's tab10, so the same class has the same colour in every grid.
CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
GT_LINESTYLE = "--"
PRED_LINESTYLE = "-"
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


def class_color(class_id: int) -> str:
    """The palette colour of a label-map class id."""
    return CLASS_COLORS[(int(class_id) - 1) % len(CLASS_COLORS)]


def new_figure(figsize: tuple[float, float]):
    """A figure on its own Agg canvas (no pyplot), ``figsize`` inches at DPI."""
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
    figure = new_figure(PR_FIGSIZE)
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


def _draw_boxes(axes, boxes: np.ndarray, class_ids: np.ndarray, height: int, width: int,
                labels: Sequence[str] | None, linestyle: str) -> None:
    from matplotlib.patches import Rectangle

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for index, ((ymin, xmin, ymax, xmax), class_id) in enumerate(
            zip(boxes, np.asarray(class_ids).reshape(-1), strict=True)):
        color = class_color(class_id)
        x0, y0 = xmin * width, ymin * height
        axes.add_patch(
            Rectangle((x0, y0), (xmax - xmin) * width, (ymax - ymin) * height,
                      fill=False, edgecolor=color, linewidth=1.8, linestyle=linestyle)
        )
        if labels is not None:
            axes.text(x0, y0, labels[index], color="white", fontsize=7, va="bottom", ha="left",
                      bbox={"facecolor": color, "alpha": 0.8, "pad": 1.0, "edgecolor": "none"}, clip_on=True)


def _legend(figure, class_ids: set[int], label_map: Mapping[int, str], top_inches: float, height_inches: float,
            columns: int) -> None:
    """Class colours (the classes drawn, in id order) and the two line styles, under the caption."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=class_color(i), label=label_map.get(i, str(i))) for i in sorted(class_ids)]
    handles += [Line2D([], [], color="black", linestyle=GT_LINESTYLE, label="ground truth"),
                Line2D([], [], color="black", linestyle=PRED_LINESTYLE, label="prediction")]
    figure.legend(handles=handles, loc="upper center", ncol=columns, fontsize=8, frameon=False,
                  bbox_to_anchor=(0.5, 1 - top_inches / height_inches))


def plot_detection_grid(
    samples: Sequence[GridSample],
    label_map: Mapping[int, str],
    path: Path | str,
    score_threshold: float = 0.3,
    columns: int = 3,
) -> Path:
    """Images in a grid (CELL_INCHES * DPI pixels per cell), each class in its ``class_color``: ground truth
    dashed, predictions with score >= ``score_threshold`` solid and labelled "class score"; a legend names
    the classes drawn."""
    if not samples:
        raise ValueError("no images to draw")
    columns = max(1, min(columns, len(samples)))
    rows = math.ceil(len(samples) / columns)
    kept = [np.asarray(sample.det_scores).reshape(-1) >= score_threshold for sample in samples]
    drawn = {int(c) for sample, keep in zip(samples, kept, strict=True)
             for c in (*np.asarray(sample.gt_class_ids).reshape(-1), *np.asarray(sample.det_class_ids).reshape(-1)[keep])}
    legend_columns = max(4, 4 * columns)
    legend_rows = math.ceil((len(drawn) + 2) / legend_columns)
    figure = new_figure((columns * CELL_INCHES, rows * CELL_INCHES))
    height_inches = rows * CELL_INCHES
    # Fixed room in inches (caption 0.1 from the top, legend from 0.3, axes below it) whatever the number of rows.
    figure.suptitle(f"dashed: ground truth    solid: predictions with score >= {score_threshold:.2f}",
                    fontsize=10, y=1 - 0.1 / height_inches, va="top")
    _legend(figure, drawn, label_map, 0.3, height_inches, legend_columns)
    axes_top = 0.45 + 0.2 * legend_rows
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - axes_top / height_inches,
                           wspace=0.04, hspace=0.12)
    for index, (sample, keep) in enumerate(zip(samples, kept, strict=True)):
        axes = figure.add_subplot(rows, columns, index + 1)
        height, width = sample.image.shape[:2]
        axes.imshow(sample.image)
        _draw_boxes(axes, sample.gt_boxes, sample.gt_class_ids, height, width, None, GT_LINESTYLE)
        det_classes = np.asarray(sample.det_class_ids).reshape(-1)[keep]
        labels = [
            f"{label_map.get(int(c), str(int(c)))} {s:.2f}"
            for c, s in zip(det_classes, np.asarray(sample.det_scores).reshape(-1)[keep], strict=True)
        ]
        _draw_boxes(axes, np.asarray(sample.det_boxes).reshape(-1, 4)[keep], det_classes, height, width, labels,
                    PRED_LINESTYLE)
        title = sample.filename if len(sample.filename) <= 40 else "..." + sample.filename[-37:]
        axes.set_title(title, fontsize=8)
        axes.set_xlim(0, width)
        axes.set_ylim(height, 0)
        axes.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
