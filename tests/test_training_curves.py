"""training/curves.py and `detserve curves`: loss, learning-rate and val-mAP curves from train_history.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from detserve.training.curves import (
    CURVES_FIGSIZE,
    CURVES_FILENAME,
    HISTORY_FILENAME,
    plot_training_curves,
    read_history,
)
from detserve.training.curves_cli import curves as curves_command
from detserve.training.evaluation.plots import DPI

COMPONENTS = ("classification_loss", "localization_loss", "regularization_loss")


def step_record(step: int, lr: float = 0.01) -> dict:
    """A record as training/train.py writes it (StepRecord.__dict__)."""
    parts = {"classification_loss": 1.0 / step, "localization_loss": 0.5 / step, "regularization_loss": 0.01}
    total = sum(parts.values())
    losses = {"steps_per_sec": 2.0, **{f"Loss/{k}": v for k, v in parts.items()}, "Loss/total_loss": total,
              "learning_rate": lr}
    return {"step": step, "total_loss": total, "steps_per_sec": 2.0, "losses": losses}


def write_history(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_step_and_validation_records_become_series(tmp_path):
    lines = [step_record(s, lr=0.001 * s) for s in range(1, 11)]
    lines.insert(5, {"step": 5, "split": "val", "mAP": 0.2, "mAP@.50": 0.4, "AR@100": 0.3, "seconds": 1.5})
    lines.append({"step": 10, "split": "val", "mAP": 0.35, "mAP@.50": 0.6})
    curves = read_history(write_history(tmp_path / HISTORY_FILENAME, lines))
    assert set(curves.losses) == {"total_loss", *COMPONENTS}
    assert sorted(curves.losses["total_loss"]) == list(range(1, 11))
    assert curves.losses["classification_loss"][4] == pytest.approx(0.25)
    assert curves.learning_rate[10] == pytest.approx(0.01)
    assert curves.validation == {"mAP": {5: 0.2, 10: 0.35}, "mAP@.50": {5: 0.4, 10: 0.6}}


def test_bad_and_partial_lines_are_skipped_with_file_and_line(tmp_path):
    path = write_history(tmp_path / HISTORY_FILENAME, [
        step_record(1),
        "{not json",  # line 2
        "",  # blank lines are not records, not errors either
        json.dumps([1, 2]),  # line 4
        {"step": "3", "total_loss": 1.0},  # line 5: the step is a string
        {"step": 4, "total_loss": "high"},  # line 6
        {"step": 5, "steps_per_sec": 3.0},  # line 7: nothing to draw
        {"step": 6, "total_loss": 0.9},  # partial: a total loss only
        {"step": 7, "split": "val", "mAP": None, "mAP@.50": 0.5},  # mAP not measurable: the rest is used
    ])
    with pytest.warns(UserWarning) as caught:
        curves = read_history(path)
    messages = [str(w.message) for w in caught]
    assert [m.split(": skipped")[0] for m in messages] == [f"{path}:{n}" for n in (2, 4, 5, 6, 7)]
    assert "step is '3'" in messages[2] and "total_loss is 'high'" in messages[3]
    assert curves.losses["total_loss"] == {1: pytest.approx(step_record(1)["total_loss"]), 6: 0.9}
    assert curves.validation == {"mAP@.50": {7: 0.5}}
    assert list(curves.learning_rate) == [1]


def test_a_step_written_twice_keeps_the_last_value(tmp_path):
    # A run restarted from scratch in the same directory appends steps that are already there.
    first, again = step_record(2), step_record(2)
    again["total_loss"] = 9.0
    curves = read_history(write_history(tmp_path / HISTORY_FILENAME, [step_record(1), first, again]))
    assert curves.losses["total_loss"][2] == 9.0


def colours(path: Path) -> tuple[tuple[int, int], int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        size = image.size
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return size, len(np.unique(pixels, axis=0))


def test_png_has_the_figure_size_and_curves_in_colour(tmp_path):
    lines = [step_record(s, lr=0.04 * math.sin(math.pi * s / 100)) for s in range(1, 101)]
    lines += [{"step": s, "split": "val", "mAP": s / 200, "mAP@.50": s / 120} for s in (25, 50, 75, 100)]
    path = plot_training_curves(write_history(tmp_path / HISTORY_FILENAME, lines), tmp_path / "out" / "c.png")
    size, distinct = colours(path)
    assert size == (int(CURVES_FIGSIZE[0] * DPI), int(CURVES_FIGSIZE[1] * DPI))
    assert distinct > 30  # five coloured series, text, grid: not a blank canvas
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    # Matplotlib's first colours (total loss, then a component) are drawn.
    for rgb in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels - rgb).max(axis=-1) <= 10).any(), rgb


def test_losses_only_still_plot_and_empty_history_is_an_error(tmp_path):
    losses_only = write_history(tmp_path / "losses.jsonl", [{"step": s, "total_loss": 1.0 / s} for s in (1, 2, 3)])
    size, distinct = colours(plot_training_curves(losses_only, tmp_path / "losses.png"))
    assert size == (800, 1000) and distinct > 10
    empty = write_history(tmp_path / "empty.jsonl", ["", "{}"])
    with pytest.warns(UserWarning, match="empty.jsonl:2"), pytest.raises(ValueError, match="no training or"):
        plot_training_curves(empty, tmp_path / "empty.png")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "missing.png")


def test_cli_writes_the_png_into_the_model_dir_and_warns_by_line(tmp_path):
    write_history(tmp_path / HISTORY_FILENAME, [step_record(1), "oops", step_record(2)])
    result = CliRunner().invoke(curves_command, ["--model-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / CURVES_FILENAME).is_file()
    assert f"{tmp_path / HISTORY_FILENAME}:2: skipped" in result.stderr

    result = CliRunner().invoke(curves_command, ["--model-dir", str(tmp_path / "none")])
    assert result.exit_code == 1 and "training history not found" in result.output


def test_history_filename_is_the_one_train_writes():
    train = pytest.importorskip("detserve.training.train")  # imports TensorFlow (seconds)
    assert train.HISTORY_FILE == HISTORY_FILENAME
