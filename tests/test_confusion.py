"""The confusion matrix (classes + background at IoU 0.5), its PNG, and per-class colours in the detections grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detserve.training.evaluation.confusion import BACKGROUND, ConfusionMatrix, plot_confusion_matrix
from detserve.training.evaluation.plots import CLASS_COLORS, GridSample, class_color, plot_detection_grid

LABELS = {1: "cat", 2: "dog"}
CAT, DOG, BG = 0, 1, 2  # row / column indices
# Four well separated objects (normalised ymin, xmin, ymax, xmax) and a box on background.
A, B, C, D = [0.0, 0.0, 0.2, 0.2], [0.0, 0.5, 0.2, 0.7], [0.5, 0.0, 0.7, 0.2], [0.5, 0.5, 0.7, 0.7]
EMPTY = [0.8, 0.8, 1.0, 1.0]
NEAR_A = [0.0, 0.0, 0.2, 0.18]  # IoU 0.9 with A
HALF_A = [0.0, 0.0, 0.2, 0.09]  # IoU 0.45 with A: below 0.5, no match


def image_counts(gt, gt_classes, dets, scores, det_classes, threshold=0.3) -> np.ndarray:
    matrix = ConfusionMatrix(LABELS, score_threshold=threshold)
    matrix.add_image(np.array(gt).reshape(-1, 4), gt_classes, np.array(dets).reshape(-1, 4), scores, det_classes)
    return matrix.counts


def test_known_confusions_misses_and_background_are_counted_exactly():
    gt = [A, B, C, D]
    gt_classes = [1, 2, 1, 2]  # cat, dog, cat, dog
    dets = [A, B, EMPTY, NEAR_A, D, D, C, EMPTY]
    scores = [0.9, 0.8, 0.7, 0.6, 0.95, 0.5, 0.1, 0.9]
    det_classes = [1, 1, 2, 2, 1, 2, 1, 7]
    # A cat->cat (correct); B dog predicted cat (confusion); EMPTY dog on background; NEAR_A a second dog on A,
    # already taken (background); D: the dog (0.5) wins over the higher-scored cat (0.95) because a same-class
    # match comes first, so the cat is background; C's cat is below the threshold (C missed); class 7 is not
    # in the label map (dropped).
    counts = image_counts(gt, gt_classes, dets, scores, det_classes)
    expected = np.zeros((3, 3), np.int64)
    expected[CAT, CAT] = 1  # A
    expected[DOG, CAT] = 1  # B
    expected[DOG, DOG] = 1  # D
    expected[BG, DOG] = 2  # EMPTY, NEAR_A
    expected[BG, CAT] = 1  # the cat on D
    expected[CAT, BG] = 1  # C missed
    np.testing.assert_array_equal(counts, expected)


def test_iou_threshold_and_score_threshold_decide_what_counts():
    # Below IoU 0.5 is no match: a background detection and a missed object.
    counts = image_counts([A], [1], [HALF_A], [0.9], [2])
    assert counts[BG, DOG] == 1 and counts[CAT, BG] == 1 and counts.sum() == 2
    # A detection no object of its class explains is confused with the object it overlaps most: a bird on a
    # cat (IoU 0.65) and a dog (IoU 0.9) is the dog's confusion, and the cat is missed.
    matrix = ConfusionMatrix({**LABELS, 3: "bird"}, score_threshold=0.3)
    matrix.add_image(np.array([[0.0, 0.0, 0.2, 0.13], NEAR_A]), [1, 2], np.array([A]), [0.9], [3])
    assert matrix.counts.tolist() == [[0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # Lowering the score threshold lets a detection count.
    assert image_counts([A], [1], [A], [0.2], [1], threshold=0.3)[CAT, CAT] == 0
    assert image_counts([A], [1], [A], [0.2], [1], threshold=0.1)[CAT, CAT] == 1


def test_images_accumulate_and_the_document_is_json_ready():
    matrix = ConfusionMatrix(LABELS, score_threshold=0.5)
    matrix.add_image(np.array([A]), [1], np.array([A]), [0.9], [2])
    matrix.add_image(np.array([A]), [1], np.array([A]), [0.9], [2])
    matrix.add_image(np.zeros((0, 4)), [], np.zeros((0, 4)), [], [])  # an image without anything
    document = matrix.document()
    assert document["labels"] == ["cat", "dog", BACKGROUND]
    assert document["counts"] == [[0, 2, 0], [0, 0, 0], [0, 0, 0]]
    assert document["rows"] == "ground truth" and document["columns"] == "prediction"
    assert document["iou_threshold"] == 0.5 and document["score_threshold"] == 0.5


def test_mismatched_arrays_are_an_error_naming_the_counts():
    with pytest.raises(ValueError, match="2 detection boxes for 1 scores"):
        image_counts([A], [1], [A, B], [0.9], [1])


def distinct_colours(path) -> int:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


def test_confusion_matrix_png(tmp_path):
    matrix = ConfusionMatrix(LABELS, score_threshold=0.3)
    matrix.add_image(np.array([A, B, C]), [1, 2, 1], np.array([A, B, EMPTY]), [0.9, 0.9, 0.9], [1, 1, 2])
    path = plot_confusion_matrix(matrix, tmp_path / "confusion_matrix.png")
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 400
    assert distinct_colours(path) > 20  # heat-map shades, text and axes, not a blank canvas


def hex_rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])


def colour_present(pixels: np.ndarray, color: str, tolerance: int = 12) -> bool:
    return bool((np.abs(pixels.astype(int) - hex_rgb(color)).max(axis=-1) <= tolerance).any())


def test_palette_is_indexed_by_class_id():
    assert class_color(1) == CLASS_COLORS[0] and class_color(2) == CLASS_COLORS[1]
    assert class_color(len(CLASS_COLORS) + 1) == CLASS_COLORS[0]  # repeats past the palette
    assert len(set(CLASS_COLORS)) == len(CLASS_COLORS)


def test_grid_draws_each_class_in_its_colour(tmp_path):
    grey = np.full((60, 80, 3), 128, np.uint8)  # no palette colour in the image itself
    sample = GridSample("two_classes.png", grey, gt_boxes=np.array([A, D]), gt_class_ids=np.array([1, 2]),
                        det_boxes=np.array([A, D]), det_scores=np.array([0.9, 0.8]), det_class_ids=np.array([1, 2]))
    path = plot_detection_grid([sample], LABELS, tmp_path / "grid.png")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert colour_present(pixels, class_color(1)) and colour_present(pixels, class_color(2))

    # One class only: its colour, and not the other's (the legend lists only the classes drawn).
    only_cats = GridSample("cats.png", grey, np.array([A]), np.array([1]), np.array([A]), np.array([0.9]),
                           np.array([1]))
    with Image.open(plot_detection_grid([only_cats], LABELS, tmp_path / "cats.png")) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert colour_present(pixels, class_color(1)) and not colour_present(pixels, class_color(2))
