"""The publishing quality gate: a candidate version is evaluated before it is published, and refused below a floor.

``prepare_gate`` checks what is cheap (the data directory, its split, its label map, the thresholds) before an
export spends a minute building; the :class:`QualityGate` it returns is called by the exporter on the staged,
verified SavedModel, just before the rename that publishes it. It raises :class:`GateRefused` (an ExportError,
so the staging directory is removed like on any other failure) or returns the :class:`GateResult` that goes
into the export's result and summary.

Nothing here evaluates or compares label maps itself: the metrics are ``detserve evaluate --model``'s
(training.evaluation: the SavedModel's serving_default, COCO metrics with TFOD2's names) and the class check is
the one evaluation makes (training.data.label_map.label_map_mismatch).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from detserve.client.contract import DEFAULT_SIGNATURE, LABEL_MAP_FILENAME, label_map_file

from .errors import ExportError
from .labels import load_label_map

if TYPE_CHECKING:  # sources imports TensorFlow; this module is cheap to import (the CLI checks a gate first)
    from .sources import Echo

# The splits a gate evaluates when none is asked for, in order of preference: the validation split is the
# one a publishing decision should use (the test split stays for the final report), test when there is no val.
DEFAULT_SPLITS = ("val", "test")
MAP = "DetectionBoxes_Precision/mAP"
MAP50 = "DetectionBoxes_Precision/mAP@.50IOU"
# (metric key, how the refusal names it, the CLI option that sets its floor)
_FLOORS = ((MAP, "mAP", "--min-map"), (MAP50, "mAP@.50", "--min-map50"))
# `detserve export`'s exit status when the gate refuses the candidate (1 is any other failure): a verdict on the
# model, which k8s/jobs/train/job.yaml's podFailurePolicy does not retry.
REFUSED_EXIT_CODE = 3


class GateRefused(ExportError):
    """The candidate scored below a floor (or could not be scored as asked); nothing was published."""


@dataclass(frozen=True)
class GateResult:
    """What the gate measured on the staged version, and the floors it passed."""

    metrics: dict[str, float | None]
    num_images: int
    data: Path
    split: str
    pattern: str
    min_map: float | None
    min_map50: float | None

    @property
    def where(self) -> str:
        return f"{self.data}/{self.split} ({self.num_images} images)"


@dataclass(frozen=True)
class QualityGate:
    """A checked gate: call it on a staged version directory (``gate(staged, echo)``)."""

    data: Path
    split: str
    pattern: str
    label_map_path: Path
    label_map: dict[int, str]
    min_map: float | None = None
    min_map50: float | None = None

    def check_classes(self, version_dir: Path) -> None:
        """Refuse a model whose assets/label_map.pbtxt is not the data's id for id (its scores would be wrong)."""
        from detserve.training.data.label_map import LabelMapError, label_map_mismatch, read_label_map

        bundled = label_map_file(version_dir)
        try:
            model_classes = read_label_map(bundled)
        except (OSError, LabelMapError) as error:
            raise GateRefused(f"export refused: cannot read the candidate's label map {bundled}: {error}; "
                              "nothing published") from error
        problem = label_map_mismatch(model_classes, self.label_map, "its assets/label_map.pbtxt",
                                     str(self.label_map_path))
        if problem:
            raise GateRefused(f"export refused: {problem}; nothing published")

    def __call__(self, version_dir: Path, echo: Echo) -> GateResult:
        self.check_classes(version_dir)  # before the evaluation: cheap, and a mismatch makes the metrics meaningless
        echo(f"quality gate: evaluating the candidate on {self.pattern}")
        metrics, num_images = _evaluate(version_dir, self.pattern, self.label_map)
        result = GateResult(metrics=metrics, num_images=num_images, data=self.data, split=self.split,
                            pattern=self.pattern, min_map=self.min_map, min_map50=self.min_map50)
        failures = [f"{name} {_value(metrics.get(key))} < {option} {floor:g}"
                    for (key, name, option), floor in zip(_FLOORS, (self.min_map, self.min_map50), strict=True)
                    if floor is not None and not _reaches(metrics.get(key), floor)]
        if failures:
            raise GateRefused(f"export refused: {', '.join(failures)} on {result.where}; nothing published")
        return result


def prepare_gate(data: Path | str, min_map: float | None = None, min_map50: float | None = None,
                 split: str | None = None) -> QualityGate:
    """A gate on ``data`` (a ``detserve data`` output directory) refusing below ``min_map`` and/or ``min_map50``.

    ``split``: default ``val`` if the directory has val shards, else ``test``. Raises ExportError naming the
    path when the directory, the split's shards or the label map are missing, before anything is built.
    """
    from detserve.training.evaluation.evaluate import data_pattern

    if min_map is None and min_map50 is None:
        raise ExportError("a quality gate needs --min-map and/or --min-map50 (0 measures without a floor)")
    for option, floor in (("--min-map", min_map), ("--min-map50", min_map50)):
        if floor is not None and not 0.0 <= floor <= 1.0:
            raise ExportError(f"{option} must be between 0 and 1, got {floor:g}")
    data = Path(data)
    if not data.is_dir():
        raise ExportError(f"quality gate data directory not found: {data} (a `detserve data --out` directory)")
    if split is None:
        split = next((s for s in DEFAULT_SPLITS if _shards(data, s)), None)
        if split is None:
            raise ExportError(f"quality gate data {data} has nothing to evaluate the candidate on: no file matches "
                              + " or ".join(data_pattern(data, s) for s in DEFAULT_SPLITS))
    elif not _shards(data, split):
        raise ExportError(f"quality gate data {data} has no {split!r} shards: nothing matches {data_pattern(data, split)}")
    label_map_path = data / LABEL_MAP_FILENAME
    label_map, _ = load_label_map(label_map_path, None)
    return QualityGate(data=data, split=split, pattern=data_pattern(data, split), label_map_path=label_map_path,
                       label_map=label_map, min_map=min_map, min_map50=min_map50)


def format_gate(result: GateResult) -> str:
    """The summary's line: what was measured, where, and the floors it passed."""
    floors = [f"{option} {floor:g}" for (_, _, option), floor in zip(_FLOORS, (result.min_map, result.min_map50),
                                                                       strict=True) if floor is not None]
    return (f"mAP {_value(result.metrics.get(MAP))}, mAP@.50 {_value(result.metrics.get(MAP50))} on "
            f"{result.where}: passed {', '.join(floors)}")


def _shards(data: Path, split: str) -> list[Path]:
    from detserve.training.evaluation.evaluate import data_pattern

    return sorted(data.glob(Path(data_pattern(data, split)).name))


def _evaluate(version_dir: Path, pattern: str, label_map: Mapping[int, str]) -> tuple[dict[str, float | None], int]:
    """(metrics, number of images): ``detserve evaluate --model``'s evaluation of the version's serving_default."""
    from detserve.training.evaluation.evaluate import evaluate
    from detserve.training.evaluation.predictors import saved_model_predictor
    from detserve.training.evaluation.report import METRICS_FILENAME, read_metrics_json

    # Outside the staging directory: it becomes the version, and evaluation writes metrics.json and plots.
    with tempfile.TemporaryDirectory(prefix="detserve-gate-") as scratch:
        try:
            predictor = saved_model_predictor(version_dir, DEFAULT_SIGNATURE)
            metrics = evaluate(predictor, pattern, label_map, scratch, grid_images=0, progress=False,
                               model_info={"kind": "saved_model", "path": str(version_dir)})
        except (FileNotFoundError, ValueError) as error:  # unreadable shards, no images, a signature missing
            raise GateRefused(f"export refused: the quality gate could not evaluate on {pattern}: "
                              f"{str(error).splitlines()[0]}; nothing published") from error
        num_images = read_metrics_json(Path(scratch) / METRICS_FILENAME)["num_images"]
    return metrics, num_images


def _reaches(value: float | None, floor: float) -> bool:
    # A metric pycocotools cannot compute (None: no ground truth) passes no floor but 0.
    if value is None or math.isnan(value):
        return floor <= 0.0
    return value >= floor


def _value(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"
