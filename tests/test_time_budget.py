"""`detserve train --time-budget`: the arithmetic (pure functions, injected throughput) and one tiny real run whose
recorded plan and rewritten schedule are checked (never its wall time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from detserve.client.cli import main as detserve
from detserve.training.checkpoints import checkpoint_step, latest_checkpoint
from detserve.training.time_budget import BUDGET_FILE, WARMUP_STEPS, fit_schedule, parse_duration, plan_steps


@pytest.mark.parametrize(("text", "seconds"), [("2h", 7200), ("45m", 2700), ("90s", 90), ("1h30m", 5400),
                                               ("1.5h", 5400), (" 10M ", 600)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "45", "2 hours", "0s", "5m banana", "-3m"])
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="time budget"):
        parse_duration(text)


def test_plan_with_the_default_evaluations_pays_five_of_them() -> None:
    # 100 s budget, 10 s spent for 30 steps, 2 steps/s, 5 s to restart, 3 s per evaluation:
    # 100 - 10 - 5 - 5 * 3 = 70 s left for steps -> 140 more.
    assert plan_steps(100, 10, 30, 2.0, restart_seconds=5, eval_seconds=3) == 170


def test_plan_with_an_evaluation_every_n_steps_pays_them_per_step() -> None:
    # 85 s for steps and evaluations; a step costs 0.5 s + 3 s / 10 steps = 0.8 s -> 106 more.
    assert plan_steps(100, 10, 30, 2.0, restart_seconds=5, eval_seconds=3, eval_every=10) == 136
    # Validation off: 85 s * 2 steps/s.
    assert plan_steps(100, 10, 30, 2.0, restart_seconds=5, eval_seconds=3, eval_every=0) == 200


def test_plan_never_goes_below_the_steps_done() -> None:
    assert plan_steps(60, 55, 30, 2.0, restart_seconds=20) == 30


def test_plan_refuses_a_throughput_that_is_not_one() -> None:
    with pytest.raises(ValueError, match="steps_per_sec"):
        plan_steps(60, 0, 0, 0.0)


def test_fit_schedule_sets_steps_and_warmup(synthetic_data: Path) -> None:
    from detserve.training.options import TrainingOptions
    from detserve.training.pipeline_config import build_pipeline_config

    config = build_pipeline_config(TrainingOptions(data_dir=synthetic_data))
    cosine = config.train_config.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    assert fit_schedule(config, 150) == 15  # the default warm-up: a tenth of the run
    assert (config.train_config.num_steps, cosine.total_steps, cosine.warmup_steps) == (150, 150, 15)
    assert fit_schedule(config, 5000) == 300  # at most 300 steps
    # The user's warm-up stays, but below the total (TFOD2's cosine schedule refuses warmup >= total).
    assert fit_schedule(config, 100, warmup_steps=500) == 99 and cosine.warmup_steps == 99


def test_time_budget_and_steps_together_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(detserve, ["train", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m"),
                                           "--time-budget", "1m", "--steps", "100"])
    assert result.exit_code == 2
    assert "--time-budget and --steps" in result.output


def test_a_bad_time_budget_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(detserve, ["train", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m"),
                                           "--time-budget", "soon"])
    assert result.exit_code == 2 and "'soon' is not a duration" in result.output


@pytest.mark.slow
def test_a_budget_run_records_its_plan_and_refits_the_schedule(synthetic_data: Path, tmp_path: Path) -> None:
    """A 60 s budget on a tiny model: whatever this machine's speed, the plan the warm-up measured is recorded, the
    pipeline.config trains to it with a schedule fitted to it, and a resumed run keeps it."""
    from detserve.training.options import default_warmup_steps
    from detserve.training.pipeline_config import load_pipeline_config

    model_dir = tmp_path / "model"
    args = ["train", "--data", str(synthetic_data), "--model-dir", str(model_dir), "--time-budget", "60s",
            "--batch-size", "2", "--depth-multiplier", "0.35", "--image-size", "128", "--augment", "",
            "--no-progress"]
    result = CliRunner().invoke(detserve, args)
    assert result.exit_code == 0, result.output
    plan = json.loads((model_dir / BUDGET_FILE).read_text())
    assert plan["budget_seconds"] == 60 and plan["measured_steps"] == WARMUP_STEPS
    assert plan["total_steps"] >= WARMUP_STEPS and plan["steps_per_sec"] > 0 and plan["eval_seconds"] > 0
    assert f"planned {plan['total_steps']} steps" in result.output

    config = load_pipeline_config(model_dir / "pipeline.config")
    cosine = config.train_config.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    assert config.train_config.num_steps == cosine.total_steps == plan["total_steps"]
    assert cosine.warmup_steps == plan["warmup_steps"] == min(default_warmup_steps(plan["total_steps"]),
                                                              plan["total_steps"] - 1)
    reached = checkpoint_step(latest_checkpoint(model_dir))
    assert WARMUP_STEPS <= reached <= plan["total_steps"]

    resumed = CliRunner().invoke(detserve, args)
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming the recorded plan of {plan['total_steps']} steps" in resumed.output
    assert "measured" not in resumed.output
    assert load_pipeline_config(model_dir / "pipeline.config").train_config.num_steps == plan["total_steps"]


@pytest.mark.slow
def test_training_stops_at_the_deadline_and_saves_the_step_it_reached(trained_model, tmp_path: Path) -> None:
    """A deadline already past (no clock involved): the run stops after its first iteration, with that step saved."""
    import shutil
    import time

    from detserve.training.train import train

    model_dir = tmp_path / "model"
    shutil.copytree(trained_model.model_dir, model_dir)
    result = train(model_dir, trained_model.steps + 50, preferred_steps_per_loop=10, progress=False,
                   deadline=time.time())
    reached = trained_model.steps + 10
    assert result.stopped == f"time budget reached at step {reached}"
    assert checkpoint_step(latest_checkpoint(model_dir)) == reached == result.final_step
