"""Evaluate any predictor on a TFRecord split: COCO metrics, metrics.json and the PNGs."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..options import TrainingOptions
from .coco_metrics import CocoEvaluator, CocoResult
from .confusion import CONFUSION_FILENAME, ConfusionMatrix, plot_confusion_matrix
from .plots import GridSample, plot_detection_grid, plot_pr_curve, safe_filename
from .predictors import Batched, Predictor, batched
from .report import METRICS_FILENAME, metrics_document, write_metrics_json

GRID_FILENAME = "detections_grid.png"
# `detserve evaluate`'s defaults too (its options read them here).
DEFAULT_SPLIT = TrainingOptions.eval_split  # the split pipeline.config evaluates
GRID_IMAGES = 9
SCORE_THRESHOLD = 0.3  # the lowest score drawn in the grid and counted in the confusion matrix
PR_CURVE_FILENAME = "pr_curve_{}.png"


def data_pattern(data: Path | str, split: str = DEFAULT_SPLIT) -> str:
    """A data directory -> the glob of its ``split`` shards; anything else is taken as a glob or file."""
    from ..data.tfrecord import split_pattern

    return split_pattern(data, split) if Path(data).is_dir() else str(data)


def unbatch_detections(outputs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A predictor's batch-of-one output -> (boxes [N,4], scores [N], label-map class ids int [N])."""
    try:
        boxes = np.asarray(outputs["detection_boxes"], dtype=np.float64)
        scores = np.asarray(outputs["detection_scores"], dtype=np.float64)
        classes = np.asarray(outputs["detection_classes"])
    except KeyError as error:
        raise ValueError(f"predictor output lacks {error}; it has {sorted(outputs)}") from None
    boxes, scores, classes = boxes.reshape(-1, 4), scores.reshape(-1), classes.reshape(-1)
    count = len(scores)
    if "num_detections" in outputs:
        # Exported models pad to max_total_detections; only the first num_detections are real.
        count = min(count, int(np.asarray(outputs["num_detections"]).reshape(-1)[0]))
    # Classes arrive as floats from TFOD2 exports (1.0, 2.0, ...).
    return boxes[:count], scores[:count], np.rint(classes[:count]).astype(np.int64)


def evaluate(
    predictor: Predictor | Batched,
    data: Path | str,
    label_map: Mapping[int, str],
    out_dir: Path | str,
    *,
    split: str = DEFAULT_SPLIT,
    max_images: int | None = None,
    grid_images: int = GRID_IMAGES,
    score_threshold: float = SCORE_THRESHOLD,
    ignore_difficult: bool = False,
    model_info: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, float | None]:
    """Run ``predictor`` on every example of ``data`` and score it with COCO metrics.

    ``predictor``: a one-image predictor, or a :class:`Batched` one (e.g. a served model), given its
    ``batch_size`` examples at a time.
    ``data`` is a directory (its ``<split>-?????-of-?????.tfrecord`` shards are read) or a glob.
    Writes into ``out_dir``: ``metrics.json`` (with ``model_info`` as the model's identity), one
    ``pr_curve_<class>.png`` per class, ``detections_grid.png`` with the first ``grid_images``
    images (predictions drawn from ``score_threshold``; the COCO metrics use every detection) and
    ``confusion_matrix.png`` (classes + background at IoU 0.5, detections from ``score_threshold``; its
    counts are in metrics.json too).
    Returns the metrics with TFOD2's names (see coco_metrics); print them with report.format_table.
    """
    from tqdm import tqdm

    from ..data.tfrecord import read_examples

    pattern = data_pattern(data, split)
    out_dir = Path(out_dir)
    evaluator = CocoEvaluator(label_map, ignore_difficult=ignore_difficult)
    confusion = ConfusionMatrix(label_map, score_threshold)
    samples: list[GridSample] = []
    examples = read_examples(pattern)  # raises FileNotFoundError naming the pattern
    if max_images is not None:
        examples = itertools.islice(examples, max_images)
    predictor = batched(predictor)
    with tqdm(desc="evaluate", unit="img", disable=not progress) as bar:
        for chunk in _chunks(examples, predictor.batch_size):
            outputs = predictor.predict([example.encoded if predictor.encoded else example.image for example in chunk])
            for example, output in zip(chunk, outputs, strict=True):
                boxes, scores, classes = unbatch_detections(output)
                height, width = example.image.shape[:2]
                evaluator.add_image(height, width, example.boxes, example.class_ids, boxes, scores, classes,
                                    gt_difficult=example.difficult)
                confusion.add_image(example.boxes, example.class_ids, boxes, scores, classes)
                if len(samples) < grid_images:
                    samples.append(GridSample(example.filename, example.image, example.boxes, example.class_ids,
                                              boxes, scores, classes))
            bar.update(len(chunk))
    result = evaluator.compute()
    write_outputs(result, out_dir, samples, label_map, score_threshold,
                  model_info=model_info, data=pattern, confusion=confusion)
    return result.metrics


def _chunks(items, size: int):
    """Lists of up to ``size`` consecutive items (the last may be shorter)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def write_outputs(
    result: CocoResult,
    out_dir: Path,
    samples: list[GridSample],
    label_map: Mapping[int, str],
    score_threshold: float,
    model_info: Mapping[str, Any] | None = None,
    data: str | None = None,
    confusion: ConfusionMatrix | None = None,
) -> dict[str, Path]:
    """metrics.json, the PR curves, the grid and the confusion matrix; returns {what: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    pr_files = {}
    for name, curve in result.pr_curves.items():
        path = out_dir / PR_CURVE_FILENAME.format(safe_filename(name))
        plot_pr_curve(result.recall_thresholds, curve, name, result.per_class[name]["AP@.50IOU"], path)
        pr_files[name] = path.name
        written[f"pr_curve/{name}"] = path
    if samples:
        written["grid"] = plot_detection_grid(samples, label_map, out_dir / GRID_FILENAME, score_threshold)
    extra: dict[str, Any] = {}
    if confusion is not None:
        written["confusion_matrix"] = plot_confusion_matrix(confusion, out_dir / CONFUSION_FILENAME)
        extra["confusion_matrix"] = confusion.document()
    document = metrics_document(
        result, model=model_info, data=data,
        extra={"files": {"pr_curves": pr_files, "grid": GRID_FILENAME if samples else None,
                         "confusion_matrix": CONFUSION_FILENAME if confusion is not None else None},
               "grid_score_threshold": score_threshold, **extra},
    )
    written["metrics"] = write_metrics_json(document, out_dir / METRICS_FILENAME)
    return written
