"""Training curves from ``train_history.jsonl``: losses, learning rate and validation mAP in one PNG.

Reads the records ``training/train.py`` appends, one JSON object a line:

- step records: ``{"step", "total_loss", "steps_per_sec", "losses": {"Loss/<component>": ..., "learning_rate": ...}}``
- validation records (training/validation.py): ``{"step", "split": "val", "mAP", "mAP@.50", ...}``; any record
  with ``"mAP"`` and/or ``"mAP@.50"`` counts (null: not measurable, drawn as nothing).

A line that is not such a record (bad JSON, no integer step, non-numeric values) is skipped with a warning
naming the file and line; a record with only some of the values contributes those it has. When a step occurs
more than once (a run restarted after its checkpoints were removed), the last value written wins.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoints import HISTORY_FILE as HISTORY_FILENAME  # noqa: F401  (re-exported: the file curves read)
from .evaluation.plots import DPI, new_figure

CURVES_FILENAME = "training_curves.png"
CURVES_FIGSIZE = (8.0, 10.0)  # inches: 800x1000 pixels at DPI
LOSS_PREFIX = "Loss/"
TOTAL_LOSS = "Loss/total_loss"
LEARNING_RATE = "learning_rate"
VALIDATION_KEYS = ("mAP", "mAP@.50")


@dataclass
class TrainingCurves:
    """{series name: {step: value}} for the losses, the learning rate and the validation metrics."""

    losses: dict[str, dict[int, float]] = field(default_factory=dict)
    learning_rate: dict[int, float] = field(default_factory=dict)
    validation: dict[str, dict[int, float]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.losses or self.learning_rate or self.validation)


def _number(value: Any, what: str) -> float:
    # bool is an int in Python, but true/false is not a measurement.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is {value!r}, not a number")
    return float(value)


def _parse_record(record: Any, curves: TrainingCurves) -> None:
    """Add one record's values to ``curves``; ValueError says what is wrong with it (nothing is added then)."""
    if not isinstance(record, dict):
        raise ValueError(f"a {type(record).__name__}, not a JSON object")
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"step is {step!r}, not an integer")
    losses = record.get("losses", {})
    if not isinstance(losses, dict):
        raise ValueError(f"losses is {losses!r}, not an object")
    values: list[tuple[dict[int, float], float]] = []
    loss_values = {name: value for name, value in losses.items() if name.startswith(LOSS_PREFIX)}
    if "total_loss" in record:
        loss_values[TOTAL_LOSS] = record["total_loss"]
    for name, value in loss_values.items():
        values.append((curves.losses.setdefault(name[len(LOSS_PREFIX):], {}), _number(value, name)))
    rate = record.get(LEARNING_RATE, losses.get(LEARNING_RATE))
    if rate is not None:
        values.append((curves.learning_rate, _number(rate, LEARNING_RATE)))
    for key in VALIDATION_KEYS:
        if record.get(key) is not None:
            values.append((curves.validation.setdefault(key, {}), _number(record[key], key)))
    # A validation record with a null mAP (nothing to measure on the val split) is valid, just empty.
    if not values and not any(key in record for key in VALIDATION_KEYS):
        raise ValueError("no loss, learning_rate or mAP in it")
    for series, value in values:
        series[step] = value


def read_history(history_path: Path | str) -> TrainingCurves:
    """The curves in ``history_path``; bad lines are skipped with a warning ``<file>:<line>: ...``."""
    history_path = Path(history_path)
    if not history_path.is_file():
        raise FileNotFoundError(f"training history not found: {history_path}")
    curves = TrainingCurves()
    with open(history_path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                _parse_record(json.loads(line), curves)
            except ValueError as error:  # json.JSONDecodeError is one
                warnings.warn(f"{history_path}:{number}: skipped: {error}", stacklevel=2)
    return curves


def _plot_series(axes, series: dict[int, float], label: str, **style) -> None:
    steps = sorted(series)
    axes.plot(steps, [series[step] for step in steps], label=label, **style)


def _no_data(axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="0.4")


def _positive(values) -> bool:
    return all(value > 0 for value in values if not math.isnan(value))


def plot_training_curves(history_path: Path | str, out_png: Path | str) -> Path:
    """Losses (total and each component), learning rate and validation mAP against the step, stacked in one
    PNG of ``CURVES_FIGSIZE * DPI`` pixels. Raises ValueError when the file has no usable record."""
    history_path = Path(history_path)
    curves = read_history(history_path)
    if curves.empty():
        raise ValueError(f"no training or validation records in {history_path}")
    figure = new_figure(CURVES_FIGSIZE)
    loss_axes, rate_axes, map_axes = figure.subplots(3, 1, sharex=True, height_ratios=(2, 1, 1.5))
    figure.subplots_adjust(left=0.11, right=0.97, top=0.95, bottom=0.06, hspace=0.12)
    name = str(history_path) if len(str(history_path)) <= 90 else "..." + str(history_path)[-87:]  # fits 800 px
    figure.suptitle(f"training curves: {name}", fontsize=9)

    # Total first and thicker; the components follow in a fixed (sorted) order so colours repeat across runs.
    names = sorted(curves.losses, key=lambda name: (name != "total_loss", name))
    for name in names:
        _plot_series(loss_axes, curves.losses[name], name, linewidth=1.6 if name == "total_loss" else 1.0)
    if names:
        # Regularisation loss is often 100x below the others: a log axis keeps every component readable.
        if _positive(v for series in curves.losses.values() for v in series.values()):
            loss_axes.set_yscale("log")
        loss_axes.legend(fontsize=8, loc="upper right")
    else:
        _no_data(loss_axes, "no loss records")
    loss_axes.set_ylabel("loss")

    if curves.learning_rate:
        _plot_series(rate_axes, curves.learning_rate, LEARNING_RATE, color="tab:purple")
    else:
        _no_data(rate_axes, "no learning_rate records")
    rate_axes.set_ylabel("learning rate")

    if curves.validation:
        for key, series in curves.validation.items():
            _plot_series(map_axes, series, f"val {key}", marker="o", markersize=3)
        best_key = VALIDATION_KEYS[0] if VALIDATION_KEYS[0] in curves.validation else next(iter(curves.validation))
        best = curves.validation[best_key]
        best_step = max(best, key=lambda step: (best[step], -step))
        map_axes.axvline(best_step, color="0.5", linestyle=":", linewidth=1.0)
        map_axes.set_title(f"best val {best_key} {best[best_step]:.4f} at step {best_step}", fontsize=9)
        map_axes.legend(fontsize=8, loc="lower right")
        map_axes.set_ylim(0.0, 1.0)
    else:
        _no_data(map_axes, "no validation records (mAP)")
    map_axes.set_ylabel("validation mAP")
    map_axes.set_xlabel("step")
    for axes in (loss_axes, rate_axes, map_axes):
        axes.grid(True, alpha=0.3)

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=DPI)
    return out_png
