"""COCO metrics on fixtures with exactly known answers, the table, metrics.json and the PNGs.

No TensorFlow here: boxes go straight into CocoEvaluator (normalised ymin, xmin, ymax, xmax).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detserve.training.evaluation.coco_metrics import (
    SUMMARY_KEYS,
    CocoEvaluator,
    _to_coco_box,
    per_class_ap50_key,
    per_class_map_key,
)
from detserve.training.evaluation.plots import (
    GridSample,
    class_color,
    plot_detection_grid,
    plot_pr_curve,
    safe_filename,
)
from detserve.training.evaluation.report import (
    format_table,
    metrics_document,
    read_metrics_json,
    write_metrics_json,
)

AP_KEYS = [k for k in SUMMARY_KEYS if "Precision" in k]
AR_KEYS = [k for k in SUMMARY_KEYS if "Recall" in k]


def box(height: float, width: float, ymin: float, xmin: float, ymax: float, xmax: float) -> list[float]:
    """A pixel box -> normalised (ymin, xmin, ymax, xmax) for an image of height x width."""
    return [ymin / height, xmin / width, ymax / height, xmax / width]


def test_box_conversion_to_absolute_coco_xywh():
    # Non-square image so that a swapped height/width shows.
    assert _to_coco_box(np.array([0.1, 0.2, 0.5, 0.6]), 200, 400) == pytest.approx([80.0, 20.0, 160.0, 80.0])


def test_predictions_equal_to_ground_truth_score_one():
    labels = {1: "with_mask", 2: "without_mask", 3: "mask_weared_incorrect"}
    evaluator = CocoEvaluator(labels)
    h, w = 200, 400
    # A small (20x20 = 400 px < 32^2) and a large (150x150 > 96^2) object; nothing medium, no class 3.
    gt_boxes = np.array([box(h, w, 10, 10, 30, 30), box(h, w, 40, 200, 190, 350)])
    evaluator.add_image(h, w, gt_boxes, [1, 2], gt_boxes, [0.9, 0.8], [1, 2])
    second = np.array([box(h, w, 100, 100, 120, 120)])
    evaluator.add_image(h, w, second, [1], second, [0.7], [1])
    result = evaluator.compute()
    metrics = result.metrics

    for key in AP_KEYS + AR_KEYS:
        if "(medium)" in key:
            assert metrics[key] is None, key  # no medium objects: pycocotools' -1 becomes None
        else:
            assert metrics[key] == pytest.approx(1.0), key
    assert metrics[per_class_ap50_key("with_mask")] == pytest.approx(1.0)
    assert metrics[per_class_map_key("without_mask")] == pytest.approx(1.0)
    assert metrics[per_class_ap50_key("mask_weared_incorrect")] is None
    assert result.per_class["with_mask"]["num_groundtruth"] == 2
    assert result.per_class["mask_weared_incorrect"] == {
        "AP@.50IOU": None, "mAP": None, "num_groundtruth": 0, "num_detections": 0}
    assert result.pr_curves["mask_weared_incorrect"] is None
    assert result.pr_curves["with_mask"].shape == (101,) and np.allclose(result.pr_curves["with_mask"], 1.0)
    assert (result.num_images, result.num_groundtruth, result.num_detections) == (2, 3, 3)


def test_shifted_box_with_known_iou():
    # GT 100x100, prediction shifted 20 px right: IoU = 80*100 / (2*10000 - 8000) = 2/3.
    # COCO's IoU thresholds are .50, .55, ..., .95 and a match needs IoU >= threshold: 2/3 passes
    # .50 .55 .60 .65 (4 of 10) and is far (> .015) from both .65 and .70, so rounding cannot flip it.
    h, w = 200, 300
    evaluator = CocoEvaluator({1: "face"})
    evaluator.add_image(h, w, [box(h, w, 50, 50, 150, 150)], [1], [box(h, w, 50, 70, 150, 170)], [0.9], [1])
    m = evaluator.compute().metrics
    assert m["DetectionBoxes_Precision/mAP@.50IOU"] == pytest.approx(1.0)
    assert m["DetectionBoxes_Precision/mAP@.75IOU"] == pytest.approx(0.0)
    assert m["DetectionBoxes_Precision/mAP"] == pytest.approx(0.4)
    assert m["DetectionBoxes_Precision/mAP (large)"] == pytest.approx(0.4)  # 10000 px > 96^2
    assert m["DetectionBoxes_Precision/mAP (small)"] is None
    assert m["DetectionBoxes_Precision/mAP (medium)"] is None
    for key in ("DetectionBoxes_Recall/AR@1", "DetectionBoxes_Recall/AR@10", "DetectionBoxes_Recall/AR@100",
                "DetectionBoxes_Recall/AR@100 (large)"):
        assert m[key] == pytest.approx(0.4), key
    assert m[per_class_ap50_key("face")] == pytest.approx(1.0)
    assert m[per_class_map_key("face")] == pytest.approx(0.4)


def test_two_classes_with_false_positives_ranked_above_true_positives():
    """Hand-computed with COCO's 101-point interpolation (all matches are exact, IoU 1)."""
    h = w = 200
    a1, b1 = box(h, w, 10, 10, 110, 110), box(h, w, 120, 120, 190, 190)  # 100x100 (large), 70x70 (medium)
    a2, empty = box(h, w, 50, 50, 150, 150), box(h, w, 0, 0, 40, 40)  # 100x100, and a spot with no object
    evaluator = CocoEvaluator({1: "a", 2: "b"})
    # Image 1: A found (0.95); B predicted on the A object (0.85, a false positive) above the true B (0.70).
    evaluator.add_image(h, w, [a1, b1], [1, 2], [a1, a1, b1], [0.95, 0.85, 0.70], [1, 2, 2])
    # Image 2: A predicted on background (0.90, false positive) above the true A (0.80).
    evaluator.add_image(h, w, [a2], [1], [empty, a2], [0.90, 0.80], [1, 1])
    result = evaluator.compute()
    m = result.metrics

    # Class a (2 GT), detections by score: TP .95, FP .90, TP .80 -> recall .5 .5 1, precision 1 .5 .667;
    # interpolated precision 1 up to recall .5 (51 thresholds 0.00..0.50) and 2/3 above (50 thresholds).
    ap_a = (51 * 1.0 + 50 * (2 / 3)) / 101
    # Class b (1 GT): FP .85 then TP .70 -> precision .5 at recall 1, interpolated .5 everywhere.
    ap_b = 0.5
    assert m[per_class_ap50_key("a")] == pytest.approx(ap_a)
    assert m[per_class_ap50_key("b")] == pytest.approx(ap_b)
    assert m[per_class_map_key("a")] == pytest.approx(ap_a)
    for key in ("DetectionBoxes_Precision/mAP", "DetectionBoxes_Precision/mAP@.50IOU", "DetectionBoxes_Precision/mAP@.75IOU"):
        assert m[key] == pytest.approx((ap_a + ap_b) / 2), key
    # Area buckets: unmatched detections outside a bucket are ignored there. Medium holds only b1
    # (the B false positive is on a 100x100 box, so large) -> 1; large holds a1, a2 (the A false
    # positive is 40x40, medium) -> class a 1, class b has no large GT -> 1 overall.
    assert m["DetectionBoxes_Precision/mAP (medium)"] == pytest.approx(1.0)
    assert m["DetectionBoxes_Precision/mAP (large)"] == pytest.approx(1.0)
    assert m["DetectionBoxes_Precision/mAP (small)"] is None
    # AR@1 keeps the best detection per image and class: a finds a1 but not a2 (the FP outranks it),
    # b's best is the FP -> (0.5 + 0) / 2.
    assert m["DetectionBoxes_Recall/AR@1"] == pytest.approx(0.25)
    assert m["DetectionBoxes_Recall/AR@10"] == pytest.approx(1.0)
    assert m["DetectionBoxes_Recall/AR@100"] == pytest.approx(1.0)
    # The stored PR curve is the interpolated precision at each recall threshold.
    curve = result.pr_curves["a"]
    assert np.allclose(curve[:51], 1.0) and np.allclose(curve[51:], 2 / 3)


def test_no_detections_give_zero_not_missing():
    evaluator = CocoEvaluator({1: "face"})
    h = w = 100
    evaluator.add_image(h, w, [box(h, w, 10, 10, 60, 60)], [1], np.zeros((0, 4)), [], [])
    m = evaluator.compute().metrics
    assert m["DetectionBoxes_Precision/mAP"] == 0.0
    assert m["DetectionBoxes_Recall/AR@100"] == 0.0
    assert m["DetectionBoxes_Precision/mAP (large)"] is None


def test_difficult_objects_count_by_default_and_can_be_ignored():
    h = w = 200
    found, missed = box(h, w, 10, 10, 110, 110), box(h, w, 120, 120, 190, 190)

    def ap50(ignore_difficult: bool) -> float:
        evaluator = CocoEvaluator({1: "face"}, ignore_difficult=ignore_difficult)
        evaluator.add_image(h, w, [found, missed], [1, 1], [found], [0.9], [1], gt_difficult=[False, True])
        return evaluator.compute().metrics["DetectionBoxes_Precision/mAP@.50IOU"]

    # As TFOD2: the difficult object is ordinary ground truth -> recall 0.5, precision 1 up to it.
    assert ap50(False) == pytest.approx(51 / 101)
    assert ap50(True) == pytest.approx(1.0)


def test_classes_outside_the_label_map_are_dropped():
    h = w = 100
    evaluator = CocoEvaluator({1: "face"})
    gt = box(h, w, 10, 10, 60, 60)
    # A class-7 ground truth and a class-0 (background) detection do not exist for the evaluation.
    evaluator.add_image(h, w, [gt, gt], [1, 7], [gt, gt], [0.5, 0.99], [1, 0])
    result = evaluator.compute()
    assert result.metrics["DetectionBoxes_Precision/mAP"] == pytest.approx(1.0)
    assert (result.num_groundtruth, result.num_detections) == (1, 1)


def test_mismatched_arrays_and_empty_evaluation_are_errors():
    evaluator = CocoEvaluator({1: "face"})
    with pytest.raises(ValueError, match="no images"):
        evaluator.compute()
    with pytest.raises(ValueError, match="ground truth arrays disagree"):
        evaluator.add_image(10, 10, np.zeros((2, 4)), [1], np.zeros((0, 4)), [], [])


def sample_metrics() -> dict[str, float | None]:
    evaluator = CocoEvaluator({1: "with_mask", 2: "without_mask"})
    h = w = 200
    evaluator.add_image(h, w, [box(h, w, 50, 50, 150, 150)], [1], [box(h, w, 50, 70, 150, 170)], [0.9], [1])
    return evaluator.compute().metrics


def test_table_lists_tfod2_names_in_order_with_four_decimals_and_na():
    table = format_table(sample_metrics(), title="COCO detection metrics")
    lines = table.splitlines()
    assert lines[0] == "COCO detection metrics"
    names = [line.split("  ")[0].rstrip() for line in lines[1:]]
    assert names == list(SUMMARY_KEYS) + [per_class_ap50_key("with_mask"), per_class_ap50_key("without_mask")]
    values = {line[: line.rindex(" ")].rstrip(): line.split()[-1] for line in lines[1:]}
    assert values["DetectionBoxes_Precision/mAP"] == "0.4000"
    assert values["DetectionBoxes_Precision/mAP@.50IOU"] == "1.0000"
    assert values["DetectionBoxes_Precision/mAP (small)"] == "n/a"
    assert values[per_class_ap50_key("without_mask")] == "n/a"
    # Values are right-aligned in one column.
    assert len({len(line) for line in lines[1:]}) == 1


def test_metrics_json_round_trips(tmp_path):
    evaluator = CocoEvaluator({1: "with_mask", 2: "without_mask"})
    h = w = 200
    evaluator.add_image(h, w, [box(h, w, 50, 50, 150, 150)], [1], [box(h, w, 50, 70, 150, 170)], [0.9], [1])
    result = evaluator.compute()
    document = metrics_document(result, model={"kind": "checkpoint", "checkpoint": "/m/ckpt-3"}, data="/d/test-*")
    document["metrics"]["nan_metric"] = float("nan")  # NaN must become null, never invalid JSON
    path = write_metrics_json(document, tmp_path / "eval" / "metrics.json")
    loaded = read_metrics_json(path)
    assert loaded["metrics"]["nan_metric"] is None
    del document["metrics"]["nan_metric"], loaded["metrics"]["nan_metric"]
    assert loaded == document
    assert loaded["num_images"] == 1
    assert loaded["per_class"]["without_mask"]["AP@.50IOU"] is None
    assert loaded["model"]["checkpoint"] == "/m/ckpt-3"
    assert "NaN" not in path.read_text()


def test_pr_curve_png(tmp_path):
    recall = np.linspace(0, 1, 101)
    path = plot_pr_curve(recall, np.where(recall <= 0.5, 1.0, 2 / 3), "with_mask", 0.835, tmp_path / "pr.png")
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 450)
    # A class without ground truth still gets a (captioned, empty) figure.
    empty = plot_pr_curve(recall, None, "absent", None, tmp_path / "absent.png")
    with Image.open(empty) as image:
        assert image.size == (600, 450)


@pytest.mark.parametrize("count, size", [(9, (1200, 1200)), (4, (1200, 800)), (2, (800, 400))])
def test_detection_grid_png(tmp_path, count, size):
    rng = np.random.default_rng(0)
    samples = [
        GridSample(
            filename=f"image_{i}.png",
            image=rng.integers(0, 255, (60, 80, 3), dtype=np.uint8),
            gt_boxes=np.array([[0.1, 0.1, 0.5, 0.5]]),
            gt_class_ids=np.array([1]),
            det_boxes=np.array([[0.12, 0.1, 0.5, 0.52], [0.6, 0.6, 0.9, 0.9]]),
            det_scores=np.array([0.9, 0.1]),  # the second is below the display threshold
            det_class_ids=np.array([1, 2]),
        )
        for i in range(count)
    ]
    path = plot_detection_grid(samples, {1: "with_mask", 2: "without_mask"}, tmp_path / "grid.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        pixels = np.asarray(image.convert("RGB"))
    # The drawn class's colour appears; the other class, below the display threshold, is neither drawn nor in
    # the legend (the random image itself is compared against the exact palette colours).
    def drawn(color: str) -> bool:
        return bool((pixels.astype(int) == [int(color[i:i + 2], 16) for i in (1, 3, 5)]).all(axis=-1).sum() > 50)

    assert drawn(class_color(1)) and not drawn(class_color(2))


def test_safe_filename():
    assert safe_filename("with mask/ok?") == "with_mask_ok"
    assert safe_filename("..") == "class"
