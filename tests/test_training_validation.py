"""Validation during training (`detserve train --eval-every`): val mAP in the history and TensorBoard, best/ kept
apart and used by `detserve evaluate` / `detserve export` by default, early stopping, and a missing val split."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from detserve.client.cli import main as detserve
from detserve.training.checkpoints import checkpoint_step, latest_checkpoint
from detserve.training.train import HISTORY_FILE
from detserve.training.validation import (
    BEST_DIR,
    BEST_FILE,
    EVAL_DIR,
    BestTracker,
    Validator,
    default_eval_every,
    keep_best,
    model_dir_checkpoint,
    short_metrics,
    val_records_missing,
)


def test_best_tracker_counts_evaluations_without_a_strictly_better_map() -> None:
    tracker = BestTracker()
    assert tracker.update(10, 0.2) and tracker.best_step == 10
    assert not tracker.update(20, 0.2)  # equal is no improvement
    assert not tracker.update(30, None)  # no value (no ground truth) neither
    assert tracker.evals_since_best == 2 and tracker.should_stop(2) and not tracker.should_stop(3)
    assert not tracker.should_stop(None)
    assert tracker.update(40, 0.3) and tracker.evals_since_best == 0 and tracker.best_map == 0.3


def test_default_eval_every_is_a_fifth_of_the_run() -> None:
    assert default_eval_every(2000) == 400
    assert default_eval_every(3) == 1


@pytest.mark.parametrize(("previous", "step", "expected"), [(0, 10, False), (10, 20, True), (19, 21, True),
                                                            (200, 210, False), (210, 230, True), (295, 300, True)])
def test_an_evaluation_is_due_on_crossing_a_multiple_and_at_the_end(previous: int, step: int, expected: bool) -> None:
    validator = Validator(Path("m"), None, Path("d"), {}, every=20)
    assert validator.due(previous, step, num_steps=300) is expected


def test_short_metrics_names_and_nan() -> None:
    short = short_metrics({"DetectionBoxes_Precision/mAP": 0.5, "DetectionBoxes_Precision/mAP@.50IOU": 0.75,
                           "DetectionBoxes_Recall/AR@100 (large)": math.nan,
                           "DetectionBoxes_PerformanceByCategory/mAP@.50IOU/cat": 0.1})
    assert short == {"mAP": 0.5, "mAP@.50": 0.75, "AR@100 (large)": None}


def test_keep_best_replaces_the_previous_best_and_leaves_no_staging(tmp_path: Path) -> None:
    for number in (1, 2):
        for suffix in (".index", ".data-00000-of-00001"):
            (tmp_path / f"ckpt-{number}{suffix}").write_text(f"{number}")
    keep_best(tmp_path, str(tmp_path / "ckpt-1"), 10, {"mAP": 0.1})
    keep_best(tmp_path, str(tmp_path / "ckpt-2"), 20, {"mAP": 0.2})
    best = tmp_path / BEST_DIR
    assert sorted(path.name for path in best.iterdir()) == [BEST_FILE, "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    assert json.loads((best / BEST_FILE).read_text())["step"] == 20
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")], "staging directories left behind"
    assert model_dir_checkpoint(tmp_path)[0] == best


def test_model_dir_without_best_uses_its_latest_checkpoint(tmp_path: Path) -> None:
    source, which = model_dir_checkpoint(tmp_path)
    assert source == tmp_path and "latest checkpoint" in which


def test_missing_or_empty_val_split_is_named(tmp_path: Path) -> None:
    assert "no val split" in val_records_missing(tmp_path)
    (tmp_path / "val-00000-of-00001.tfrecord").write_bytes(b"")
    assert "is empty" in val_records_missing(tmp_path)


def test_no_val_split_turns_validation_off_with_a_message(synthetic_data: Path, tmp_path: Path) -> None:
    from detserve.training.options import TrainingOptions
    from detserve.training.pipeline_config import build_pipeline_config

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data, ignore=shutil.ignore_patterns("val-*"))
    config = build_pipeline_config(TrainingOptions(data_dir=data))
    messages: list[str] = []
    assert Validator.create(tmp_path / "model", config, every=10, echo=messages.append) is None
    assert len(messages) == 1 and "validation off: no val split" in messages[0] and "continues" in messages[0]


def _train(*args: str) -> str:
    result = CliRunner().invoke(detserve, ["train", *args, "--no-progress"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def validated_run(trained_model, tmp_path_factory) -> Path:
    """The trained fixture resumed for 20 steps with an evaluation every 10 (two evaluations)."""
    model_dir = tmp_path_factory.mktemp("validated") / "model"
    shutil.copytree(trained_model.model_dir, model_dir)
    output = _train("--data", str(trained_model.data_dir), "--model-dir", str(model_dir),
                    "--steps", str(trained_model.steps + 20), "--eval-every", "10")
    (model_dir / "train-output.txt").write_text(output)
    return model_dir


@pytest.mark.slow
def test_validation_writes_history_tensorboard_and_the_best_checkpoint(validated_run: Path, trained_model) -> None:
    output = (validated_run / "train-output.txt").read_text()
    records = [json.loads(line) for line in (validated_run / HISTORY_FILE).read_text().splitlines()]
    evaluations = [record for record in records if record.get("split") == "val"]
    steps = [trained_model.steps + 10, trained_model.steps + 20]
    assert [record["step"] for record in evaluations] == steps
    for record in evaluations:
        assert 0 <= record["mAP"] <= 1 and 0 <= record["mAP@.50"] <= 1 and "AR@100" in record
        assert f"val step {record['step']}: mAP {record['mAP']:.3f}" in output  # one progress line each
    # The evaluation records sit among the step records, after the step they evaluated.
    position = records.index(evaluations[0])
    assert records[position - 1]["step"] == steps[0] and "total_loss" in records[position - 1]

    best = json.loads((validated_run / BEST_DIR / BEST_FILE).read_text())
    winner = max(evaluations, key=lambda record: record["mAP"])  # the first of equals: improvement is strict
    assert best["step"] == winner["step"] and best["metrics"]["mAP"] == winner["mAP"]
    best_prefix = latest_checkpoint(validated_run / BEST_DIR)
    assert checkpoint_step(best_prefix) == best["step"]
    assert list((validated_run / EVAL_DIR).glob("events.out.tfevents.*")), "no TensorBoard logs of the evaluations"
    assert f"best val checkpoint: {validated_run / BEST_DIR}" in output


@pytest.mark.slow
def test_evaluate_and_export_use_best_by_default(validated_run: Path, trained_model, tmp_path: Path, capsys) -> None:
    from detserve.export.cli import _checkpoint_source

    best_step = json.loads((validated_run / BEST_DIR / BEST_FILE).read_text())["step"]
    result = CliRunner().invoke(detserve, ["evaluate", "--model-dir", str(validated_run), "--split", "val",
                                           "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert f"using the best val checkpoint {validated_run / BEST_DIR} (step {best_step}" in result.output
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["model"]["checkpoint"]
    assert Path(evaluated).parent == validated_run / BEST_DIR

    pipeline_config, source = _checkpoint_source(validated_run, None, None)
    assert source == validated_run / BEST_DIR and pipeline_config == validated_run / "pipeline.config"
    assert "using the best val checkpoint" in capsys.readouterr().err
    # --checkpoint still picks any checkpoint.
    assert _checkpoint_source(validated_run, validated_run, None)[1] == validated_run


@pytest.mark.slow
def test_early_stop_after_k_evaluations_without_improvement(trained_model, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_model.model_dir, model_dir)
    # A kept best that no evaluation can beat (mAP 1.0, improvement is strict): the 2nd evaluation stops the run.
    (model_dir / BEST_DIR).mkdir()
    (model_dir / BEST_DIR / BEST_FILE).write_text(json.dumps({"step": 0, "metrics": {"mAP": 1.0}}))
    output = _train("--data", str(trained_model.data_dir), "--model-dir", str(model_dir),
                    "--steps", str(trained_model.steps + 40), "--eval-every", "10", "--early-stop-evals", "2")
    stop_step = trained_model.steps + 20
    assert f"stopped: early stop at step {stop_step}: no better val mAP in 2 evaluation(s)" in output
    assert checkpoint_step(latest_checkpoint(model_dir)) == stop_step


def test_early_stop_needs_validation(tmp_path: Path) -> None:
    result = CliRunner().invoke(detserve, ["train", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m"),
                                           "--eval-every", "0", "--early-stop-evals", "2"])
    assert result.exit_code == 2 and "--early-stop-evals needs validation" in result.output
