"""detserve.export.parity: what "the same answer" means for a detector (numpy only, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from detserve.export.parity import (
    MAX_TOLERANCE,
    MIN_TOLERANCE,
    PARITY_BATCH,
    Detections,
    Tolerance,
    compare_detections,
    iou,
    iou_range,
    measure_tolerance,
    parity_rows,
)

TIGHT = Tolerance(score=1e-4, box=1e-4)


def outputs(rows, slots: int = 8) -> dict[str, np.ndarray]:
    """[(class, score, box)] -> a batch-of-one output dict padded to ``slots``."""
    boxes = np.zeros((1, slots, 4), np.float32)
    scores = np.zeros((1, slots), np.float32)
    classes = np.ones((1, slots), np.float32)
    for i, (cls, score, box) in enumerate(rows):
        boxes[0, i], scores[0, i], classes[0, i] = box, score, cls
    return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
            "num_detections": np.array([len(rows)], np.float32)}


def box_with_iou(base, target: float):
    """A box of base's height, shifted right so that its IoU with base is ``target``."""
    ymin, xmin, ymax, xmax = base
    width = xmax - xmin
    shift = width * (1 - target) / (1 + target)  # IoU of two equal boxes offset by s: (w - s) / (w + s)
    return [ymin, xmin + shift, ymax, xmax + shift]


A = [0.1, 0.1, 0.4, 0.4]
B = [0.5, 0.5, 0.8, 0.9]


def test_float_noise_and_reordered_ties_are_the_same_answer():
    a = outputs([(1, 0.9, A), (2, 0.6, B), (2, 0.6, [0.1, 0.5, 0.3, 0.7])])
    b = outputs([(1, 0.90004, [0.1, 0.1, 0.4, 0.40003]), (2, 0.6, [0.1, 0.5, 0.3, 0.7]), (2, 0.6, B)])
    result = compare_detections(a, b, tolerance=TIGHT)
    assert result["ok"], result
    assert result["compared"] == 3 and result["max_score_diff"] == pytest.approx(4e-5, abs=1e-6)


def test_a_score_or_box_beyond_the_tolerance_is_a_difference():
    a = outputs([(1, 0.9, A), (2, 0.6, B)])
    moved = outputs([(1, 0.9, [0.1, 0.1, 0.4, 0.41]), (2, 0.6, B)])
    result = compare_detections(a, moved, tolerance=TIGHT)
    assert not result["ok"] and "differs from the exported one by score 0.00e+00, box 1.00e-02" in result["problem"]
    rescored = outputs([(1, 0.9, A), (2, 0.59, B)])
    assert "score 1.00e-02" in compare_detections(a, rescored, tolerance=TIGHT)["problem"]


def test_an_extra_or_missing_detection_is_a_difference():
    a = outputs([(1, 0.9, A), (2, 0.6, B)])
    extra = outputs([(1, 0.9, A), (2, 0.6, B), (1, 0.8, [0.6, 0.0, 0.9, 0.2])])
    assert "exported detection class 1 score 0.8000" in compare_detections(a, extra, tolerance=TIGHT)["problem"]
    assert "reference detection class 1 score 0.8000" in compare_detections(extra, a, tolerance=TIGHT)["problem"]


def test_an_nms_flip_at_the_iou_threshold_is_excused_and_counted():
    # C overlaps A by IoU 0.6000 (the threshold): rounding keeps it on one side and suppresses it on the other.
    c = box_with_iou(A, 0.6)
    assert iou(np.array(A), np.array([c]))[0] == pytest.approx(0.6, abs=1e-6)
    kept = outputs([(1, 0.9, A), (1, 0.7, c), (2, 0.6, B)])
    suppressed = outputs([(1, 0.9, A), (2, 0.6, B)])
    result = compare_detections(kept, suppressed, tolerance=TIGHT)
    assert result["ok"], result
    assert result["nms_flips"] == 1
    assert compare_detections(suppressed, kept, tolerance=TIGHT)["ok"]
    # The same missing box overlapping by IoU 0.45 cannot have been suppressed by rounding.
    far = outputs([(1, 0.9, A), (1, 0.7, box_with_iou(A, 0.45)), (2, 0.6, B)])
    assert not compare_detections(far, suppressed, tolerance=TIGHT)["ok"]
    # Nor one of another class (per-class NMS), unless NMS is class-agnostic.
    other_class = outputs([(1, 0.9, A), (2, 0.7, c), (2, 0.6, B)])
    assert not compare_detections(other_class, suppressed, tolerance=TIGHT)["ok"]
    agnostic = Tolerance(score=1e-4, box=1e-4, class_agnostic_nms=True)
    assert compare_detections(other_class, suppressed, tolerance=agnostic)["ok"]


def test_the_cascade_of_one_flip_is_excused():
    # P suppresses Q at the threshold on one side only; where Q survives it suppresses R (IoU 0.8).
    p = A
    q = box_with_iou(p, 0.6)
    r = box_with_iou(q, 0.8)
    assert iou(np.array(p), np.array([r]))[0] < 0.6
    left = outputs([(1, 0.9, p), (1, 0.7, r)])  # Q suppressed by P, so R survives
    right = outputs([(1, 0.9, p), (1, 0.8, q)])  # Q survives and suppresses R
    result = compare_detections(left, right, tolerance=TIGHT)
    assert result["ok"], result
    assert result["nms_flips"] == 2


def test_the_score_floor_and_the_top_k_cut_are_excused():
    a = outputs([(1, 0.9, A), (2, 0.6, B), (1, 0.05, [0.6, 0.0, 0.9, 0.2])])
    b = outputs([(1, 0.9, A), (2, 0.6, B)])
    assert compare_detections(a, b, tolerance=TIGHT, floor=0.05)["ok"]
    full = outputs([(1, 0.9, A), (2, 0.6, B)], slots=2)  # full output: 0.6 was the last that fitted
    cut_off = outputs([(1, 0.9, A), (2, 0.6, B), (2, 0.59995, [0.6, 0.0, 0.9, 0.2])])
    assert compare_detections(cut_off, full, tolerance=TIGHT, floor=0.0)["ok"]


def test_shifted_class_ids_are_named():
    rows = [(1, 0.9, A), (2, 0.6, B), (2, 0.5, [0.1, 0.5, 0.3, 0.7])]
    shifted = [(c - 1, s, b) for c, s, b in rows]
    result = compare_detections(outputs(rows), outputs(shifted), tolerance=TIGHT)
    assert not result["ok"]
    assert "class ids are shifted by -1 (3 of 3 detections match otherwise)" in result["problem"]


def test_moved_boxes_are_named_as_another_input():
    rows = [(1, 0.9, A), (2, 0.6, B), (2, 0.5, [0.1, 0.5, 0.3, 0.7])]
    resized = [(c, s - 0.02, [v * 0.96 for v in b]) for c, s, b in rows]
    result = compare_detections(outputs(rows), outputs(resized), tolerance=TIGHT)
    assert not result["ok"] and "the model saw another image than the source did" in result["problem"]


def test_iou_range_brackets_the_iou_of_moved_boxes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = np.sort(rng.uniform(0, 1, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        b = np.clip(a + rng.uniform(-0.2, 0.2, 4), 0, 1)
        b = np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])
        slack = 0.01
        low, high = iou_range(a, b[None], slack)
        for _ in range(5):
            moved_a = a + rng.uniform(-slack, slack, 4)
            moved_b = b + rng.uniform(-slack, slack, 4)
            value = iou(moved_a, moved_b[None])[0]
            assert low[0] - 1e-9 <= value <= high[0] + 1e-9


def test_the_tolerance_is_a_margin_over_the_measured_spread_within_bounds():
    assert Tolerance.from_spread(0.0, 0.0).score == MIN_TOLERANCE
    measured = Tolerance.from_spread(3e-4, 1e-4, nms_iou_threshold=0.5)
    assert (measured.score, measured.box, measured.nms_iou_threshold) == pytest.approx((3e-3, 1e-3, 0.5))
    assert measured.problem() == ""
    loose = Tolerance.from_spread(MAX_TOLERANCE, 0.0)
    assert "too loose to tell a defect from rounding" in loose.problem()
    assert Tolerance.from_json(measured.to_json()) == measured


def test_measure_tolerance_runs_batches_of_copies_and_takes_the_largest_spread():
    images = [np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)]
    reference = [outputs([(1, 0.9, A), (2, 0.6, B)]), outputs([(1, 0.8, B)]), outputs([(1, 0.7, A)])]
    seen = []

    def run(batch):
        seen.append(batch.shape)
        value = int(batch[0, 0, 0, 0])  # which image the batch holds copies of
        noisy = [reference[value]] * len(batch)
        rows = {key: np.concatenate([r[key] for r in noisy]) for key in noisy[0]}
        rows["detection_scores"] = rows["detection_scores"] + np.float32(2e-5) * np.arange(len(batch))[:, None]
        return rows

    tolerance = measure_tolerance(run, images, reference, 0.55, False, 0.3)
    assert seen == [(PARITY_BATCH, 4, 4, 3)] * 2  # the equal-size group, each as a batch of copies
    assert tolerance.score_spread == pytest.approx(7 * 2e-5, rel=1e-3)
    assert tolerance.score == pytest.approx(10 * 7 * 2e-5, rel=1e-3) and tolerance.box == MIN_TOLERANCE
    assert (tolerance.nms_iou_threshold, tolerance.nms_score_threshold) == (0.55, 0.3)


def test_parity_rows_put_every_equal_size_image_in_rows_that_reordering_moves():
    images = [np.zeros((3, 5, 3))] * 2 + [np.zeros((4, 4, 3))] * 4
    rows = parity_rows(images)
    assert len(rows) == PARITY_BATCH and set(rows) == {2, 3, 4, 5}
    assert rows[::-1] != rows and rows[4:] + rows[:4] != rows
    assert all(rows[k] != rows[k + 1] for k in range(len(rows) - 1))
    assert parity_rows([np.zeros((2, 2, 3))]) == [0] * PARITY_BATCH


def test_detections_read_only_the_valid_slots():
    detections = Detections.of(outputs([(3, 0.9, A)], slots=5))
    assert len(detections) == 1 and detections.slots == 5 and detections.classes.tolist() == [3]


def test_the_model_s_own_score_threshold_is_a_cut():
    kept = outputs([(1, 0.9, A), (2, 0.30005, B)])
    dropped = outputs([(1, 0.9, A)])
    assert not compare_detections(kept, dropped, tolerance=TIGHT)["ok"]
    thresholded = Tolerance(score=1e-4, box=1e-4, nms_score_threshold=0.3)
    assert compare_detections(kept, dropped, tolerance=thresholded)["ok"]


def test_a_tolerance_without_a_measurement_still_explains_itself():
    assert "too loose" in Tolerance(score=0.05).problem()


@pytest.mark.parametrize("distinct", [2, 3, 4, 5, 8])
def test_no_reordering_of_the_parity_batch_keeps_every_row_on_its_image(distinct):
    rows = parity_rows([np.zeros((4, 4, 3))] * distinct)
    orders = [rows[k:] + rows[:k] for k in range(1, len(rows))]
    reversed_rows = rows[::-1]
    orders += [reversed_rows[k:] + reversed_rows[:k] for k in range(len(rows))]
    assert len(set(rows)) == distinct and all(order != rows for order in orders)
