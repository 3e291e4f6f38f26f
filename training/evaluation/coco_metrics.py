"""COCO box metrics with pycocotools, keyed with TFOD2's metric names.

The ground truth and detections are built as COCO dicts in memory, in absolute pixels of each
image (TFOD2's evaluator scales boxes to the original image size, and the small/medium/large area
buckets are in pixels), and scored with ``COCOeval(iouType="bbox")``. The key names are the ones
TFOD2's ``CocoDetectionEvaluator`` reports (object_detection/metrics/coco_evaluation.py and
coco_tools.py), so numbers can be compared with a ``model_main_tf2`` evaluation line for line.

``difficult`` objects: TFOD2's COCO evaluator ignores ``image/object/difficult`` (only
``image/object/is_crowd`` becomes ``iscrowd``, and detserve's TFRecords carry no is_crowd), so by
default difficult objects count as ordinary ground truth, like TFOD2. ``ignore_difficult=True``
marks them ``iscrowd=1`` instead: detections on them are then neither true nor false positives and
they are not needed for recall (pycocotools matches crowd boxes by intersection over the
detection's area, close to PASCAL VOC's "difficult" handling).

A metric pycocotools cannot compute (it returns -1, e.g. an area bucket or class with no ground
truth) is reported as ``None``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

# (name, index into COCOeval.stats), the order TFOD2 prints them (coco_tools.COCO_METRIC_NAMES_AND_INDEX).
SUMMARY_METRICS: tuple[tuple[str, int], ...] = (
    ("DetectionBoxes_Precision/mAP", 0),
    ("DetectionBoxes_Precision/mAP@.50IOU", 1),
    ("DetectionBoxes_Precision/mAP@.75IOU", 2),
    ("DetectionBoxes_Precision/mAP (small)", 3),
    ("DetectionBoxes_Precision/mAP (medium)", 4),
    ("DetectionBoxes_Precision/mAP (large)", 5),
    ("DetectionBoxes_Recall/AR@1", 6),
    ("DetectionBoxes_Recall/AR@10", 7),
    ("DetectionBoxes_Recall/AR@100", 8),
    ("DetectionBoxes_Recall/AR@100 (small)", 9),
    ("DetectionBoxes_Recall/AR@100 (medium)", 10),
    ("DetectionBoxes_Recall/AR@100 (large)", 11),
)
SUMMARY_KEYS: tuple[str, ...] = tuple(name for name, _ in SUMMARY_METRICS)
PER_CLASS_AP50 = "DetectionBoxes_PerformanceByCategory/mAP@.50IOU/"
# TFOD2's own per-category key (AP averaged over IoU .50:.95).
PER_CLASS_MAP = "DetectionBoxes_PerformanceByCategory/mAP/"


def per_class_ap50_key(class_name: str) -> str:
    return PER_CLASS_AP50 + class_name


def per_class_map_key(class_name: str) -> str:
    return PER_CLASS_MAP + class_name


@dataclass
class CocoResult:
    """What one evaluation produced."""

    # Summary metrics and per-class keys (TFOD2 names); None where pycocotools has no value.
    metrics: dict[str, float | None]
    # {class name: {"AP@.50IOU", "mAP", "num_groundtruth", "num_detections"}} in label-map order.
    per_class: dict[str, dict[str, float | int | None]]
    # COCO's 101 recall thresholds, and per class the interpolated precision at IoU .50 (area all,
    # 100 detections) at each of them; None for a class without ground truth.
    recall_thresholds: np.ndarray
    pr_curves: dict[str, np.ndarray | None]
    num_images: int
    num_groundtruth: int
    num_detections: int


def _none_if_missing(value: float) -> float | None:
    # pycocotools uses -1 for "no ground truth to measure against".
    value = float(value)
    return None if value < 0 or np.isnan(value) else value


def _mean_valid(values: np.ndarray) -> float | None:
    # Same rule as COCOeval.summarize: average the entries that are not -1.
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else None


def _check_lengths(what: str, **arrays: np.ndarray) -> None:
    if len({len(array) for array in arrays.values()}) > 1:
        counts = ", ".join(f"{len(array)} {name}" for name, array in arrays.items())
        raise ValueError(f"{what} arrays disagree: {counts}")


def _to_coco_box(box: np.ndarray, height: int, width: int) -> list[float]:
    """Normalised (ymin, xmin, ymax, xmax) -> absolute COCO (x, y, w, h), in float64."""
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    x0, y0, x1, y1 = xmin * width, ymin * height, xmax * width, ymax * height
    return [x0, y0, x1 - x0, y1 - y0]


@dataclass
class CocoEvaluator:
    """Accumulates ground truth and detections image by image, then scores them with COCOeval.

    ``label_map`` is {label-map id: class name}; ids are used as COCO category ids unchanged.
    Ground truth and detections whose class is not in the label map are dropped, as TFOD2 does.
    """

    label_map: Mapping[int, str]
    ignore_difficult: bool = False
    _images: list[dict] = field(default_factory=list, init=False)
    _gt: list[dict] = field(default_factory=list, init=False)
    _dt: list[dict] = field(default_factory=list, init=False)

    def add_image(
        self,
        height: int,
        width: int,
        gt_boxes: np.ndarray,
        gt_class_ids: np.ndarray,
        det_boxes: np.ndarray,
        det_scores: np.ndarray,
        det_class_ids: np.ndarray,
        gt_difficult: np.ndarray | None = None,
    ) -> int:
        """Add one image; boxes are normalised (ymin, xmin, ymax, xmax). Returns its COCO image id."""
        image_id = len(self._images) + 1
        self._images.append({"id": image_id, "height": int(height), "width": int(width)})
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
        difficult = (
            np.zeros(len(gt_boxes), dtype=bool) if gt_difficult is None else np.asarray(gt_difficult, bool).reshape(-1)
        )
        _check_lengths("ground truth", boxes=gt_boxes, classes=gt_class_ids, difficult=difficult)
        det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
        det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
        det_class_ids = np.asarray(det_class_ids).reshape(-1)
        _check_lengths("detection", boxes=det_boxes, scores=det_scores, classes=det_class_ids)
        self._annotate(self._gt, image_id, height, width, gt_boxes, gt_class_ids,
                       iscrowd=[int(bool(d) and self.ignore_difficult) for d in difficult])
        self._annotate(self._dt, image_id, height, width, det_boxes, det_class_ids,
                       score=[float(score) for score in det_scores], iscrowd=[0] * len(det_boxes))
        return image_id

    def _annotate(self, annotations: list[dict], image_id: int, height: int, width: int, boxes: np.ndarray,
                  class_ids: np.ndarray, **per_box: list) -> None:
        """Append one image's boxes as COCO annotations, each with its entry of every ``per_box`` list."""
        for index, (box, class_id) in enumerate(zip(boxes, class_ids, strict=True)):
            if int(class_id) not in self.label_map:
                continue
            bbox = _to_coco_box(box, height, width)
            annotations.append({
                # ids start at 1: COCOeval treats a match id of 0 as "unmatched".
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(class_id),
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                **{name: values[index] for name, values in per_box.items()},
            })

    def compute(self) -> CocoResult:
        if not self._images:
            raise ValueError("no images were added; nothing to evaluate")
        from pycocotools.cocoeval import COCOeval

        categories = [{"id": int(i), "name": name} for i, name in sorted(self.label_map.items())]
        # pycocotools prints progress on every step; keep the caller's stdout clean.
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = _coco({"images": self._images, "categories": categories, "annotations": self._gt})
            # Built directly rather than with loadRes, which fails on an empty detection list.
            coco_dt = _coco({"images": self._images, "categories": categories, "annotations": self._dt})
            coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()

        metrics: dict[str, float | None] = {
            name: _none_if_missing(coco_eval.stats[index]) for name, index in SUMMARY_METRICS
        }
        params = coco_eval.params
        precision = coco_eval.eval["precision"]  # [IoU T, recall R, class K, area A, maxDets M]
        iou50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
        area_all = params.areaRngLbl.index("all")
        max_dets = params.maxDets.index(100)
        gt_counts = _count_by_class(self._gt)
        dt_counts = _count_by_class(self._dt)

        per_class: dict[str, dict[str, float | int | None]] = {}
        pr_curves: dict[str, np.ndarray | None] = {}
        for k, category_id in enumerate(params.catIds):
            name = self.label_map[category_id]
            curve = precision[iou50, :, k, area_all, max_dets]
            ap50 = _mean_valid(curve)
            class_map = _mean_valid(precision[:, :, k, area_all, max_dets])
            metrics[per_class_ap50_key(name)] = ap50
            metrics[per_class_map_key(name)] = class_map
            per_class[name] = {
                "AP@.50IOU": ap50,
                "mAP": class_map,
                "num_groundtruth": gt_counts.get(category_id, 0),
                "num_detections": dt_counts.get(category_id, 0),
            }
            pr_curves[name] = None if ap50 is None else curve.astype(np.float64).copy()
        return CocoResult(
            metrics=metrics,
            per_class=per_class,
            recall_thresholds=np.asarray(params.recThrs, dtype=np.float64).copy(),
            pr_curves=pr_curves,
            num_images=len(self._images),
            num_groundtruth=len(self._gt),
            num_detections=len(self._dt),
        )


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _count_by_class(annotations: list[dict]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for annotation in annotations:
        counts[annotation["category_id"]] = counts.get(annotation["category_id"], 0) + 1
    return counts
