"""`detserve train --time-budget 45m`: the step count that fits a wall-clock budget, measured, not guessed.

A warm-up of ``WARMUP_STEPS`` steps (and, with validation on, one evaluation of its checkpoint) measures the
throughput and the cost of an evaluation on this machine; ``plan_steps`` turns them into the total step count that
fits what is left of the budget; the run's pipeline.config gets that count and a learning-rate schedule fitted to it
(cosine ``total_steps`` and warm-up) before the main loop starts; the main loop stops at the deadline in any case.
The plan is recorded in ``<model_dir>/time_budget.json``: a resumed run trains to the recorded step count (with
what is left of the budget) instead of measuring again.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .options import default_warmup_steps
from .validation import EVALS_PER_RUN, default_eval_every

if TYPE_CHECKING:
    from object_detection.protos.pipeline_pb2 import TrainEvalPipelineConfig

    from .train import TrainResult
    from .validation import Validator

BUDGET_FILE = "time_budget.json"
WARMUP_STEPS = 30  # measured before planning: the first iteration (tracing) is left out of the rate
_UNITS = {"h": 3600, "m": 60, "s": 1}

Echo = Callable[[str], None]


def parse_duration(text: str) -> float:
    """``"2h"``, ``"45m"``, ``"90s"``, ``"1h30m"`` -> seconds; ValueError naming the value otherwise."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text.strip().lower())
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", text.strip().lower()).strip():
        raise ValueError(f"time budget {text!r} is not a duration like 2h, 45m, 90s or 1h30m")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"time budget {text!r} must be longer than 0s")
    return seconds


def plan_steps(budget_seconds: float, elapsed_seconds: float, done_steps: int, steps_per_sec: float,
               restart_seconds: float = 0.0, eval_seconds: float = 0.0, eval_every: int | None = None) -> int:
    """The total step count (``done_steps`` included) that fits the budget.

    What is left (``budget_seconds - elapsed_seconds``, less ``restart_seconds``: the main loop traces the model
    again) pays for the remaining steps at ``steps_per_sec`` and for the evaluations: ``EVALS_PER_RUN`` of
    ``eval_seconds`` each when ``eval_every`` is None (the default cadence, a fifth of the run), one per
    ``eval_every`` steps otherwise, none for 0. Never less than ``done_steps``.
    """
    if steps_per_sec <= 0 or not math.isfinite(steps_per_sec):
        raise ValueError(f"steps_per_sec must be a positive number, got {steps_per_sec}")
    left = budget_seconds - elapsed_seconds - restart_seconds
    if eval_every is None:
        left -= EVALS_PER_RUN * eval_seconds
        seconds_per_step = 1 / steps_per_sec
    else:
        seconds_per_step = 1 / steps_per_sec + (eval_seconds / eval_every if eval_every else 0.0)
    return done_steps + max(0, math.floor(left / seconds_per_step))


@dataclass
class BudgetPlan:
    """What the warm-up measured and what was derived from it (the content of time_budget.json)."""

    budget_seconds: float
    total_steps: int
    warmup_steps: int  # of the learning-rate schedule
    measured_steps: int  # the step the warm-up reached
    steps_per_sec: float
    restart_seconds: float
    eval_seconds: float
    seconds_spent: float = 0.0  # by the finished runs of this model dir: a resumed run gets the rest

    def save(self, model_dir: Path | str) -> Path:
        path = Path(model_dir) / BUDGET_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n")
        temporary.replace(path)
        return path


def read_plan(model_dir: Path | str) -> BudgetPlan | None:
    path = Path(model_dir) / BUDGET_FILE
    if not path.is_file():
        return None
    try:
        return BudgetPlan(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{path} is not a time-budget record ({error}); delete it to measure again") from error


def fit_schedule(config: TrainEvalPipelineConfig, total_steps: int, warmup_steps: int | None = None) -> int:
    """Set the run's step count and fit the cosine schedule to it; returns the schedule's warm-up steps
    (``warmup_steps``, the user's, or the default for ``total_steps``)."""
    from .pipeline_config import set_step_budget

    set_step_budget(config, total_steps)
    learning_rate = config.train_config.optimizer.momentum_optimizer.learning_rate
    warmup = default_warmup_steps(total_steps) if warmup_steps is None else warmup_steps
    if learning_rate.HasField("cosine_decay_learning_rate"):
        # TFOD2's cosine schedule rejects warmup_steps >= total_steps.
        warmup = min(warmup, total_steps - 1)
        learning_rate.cosine_decay_learning_rate.warmup_steps = warmup
    return warmup


def train_within_budget(model_dir: Path | str, config: TrainEvalPipelineConfig, budget_seconds: float, *,
                        validator: Validator | None = None, eval_every: int | None = None,
                        warmup_steps: int | None = None, echo: Echo = print, **train_options) -> TrainResult:
    """Warm up, plan, rewrite pipeline.config and train until the planned step or the deadline (module doc).

    ``eval_every``: the user's --eval-every (None: a fifth of the planned run); ``warmup_steps``: the user's
    --warmup-steps (None: the default for the planned run); ``train_options`` go to ``train``."""
    from .checkpoints import checkpoint_step, latest_checkpoint
    from .distribution import distribution
    from .pipeline_config import PIPELINE_CONFIG, save_pipeline_config
    from .train import train

    dist = distribution(train_options.get("strategy", "auto"))
    model_dir = Path(model_dir)
    started = time.time()
    plan = read_plan(model_dir)
    warm = None
    if plan is not None:
        echo(f"time budget: resuming the recorded plan of {plan.total_steps} steps "
             f"({plan.seconds_spent:.0f}s of {plan.budget_seconds:.0f}s spent) from {model_dir / BUDGET_FILE}")
    else:
        start_step = checkpoint_step(latest_checkpoint(model_dir))
        warm = train(model_dir, start_step + WARMUP_STEPS, pipeline_config=config, **train_options)
        eval_seconds = 0.0
        if validator is not None:
            # The model build and trace happen once per run: the later evaluations cost the rest.
            eval_seconds = dist.on_chief(
                lambda: round(validator.evaluate(warm.checkpoint)["seconds"] - validator.setup_seconds, 2)) or 0.0
        rates = sorted(record.steps_per_sec for record in warm.history[1:]) or [warm.final_step / max(warm.seconds, 1e-9)]
        steps_per_sec = rates[len(rates) // 2]
        restart_seconds = max(0.0, warm.seconds - (warm.final_step - warm.start_step) / steps_per_sec)
        elapsed = time.time() - started
        total = plan_steps(budget_seconds, elapsed, warm.final_step, steps_per_sec, restart_seconds, eval_seconds,
                           eval_every)
        total = int(dist.min_over_workers(total))  # one plan for every worker: they step together
        warmup = fit_schedule(config, total, warmup_steps)
        plan = BudgetPlan(budget_seconds, total, warmup, warm.final_step, round(steps_per_sec, 4),
                          round(restart_seconds, 2), eval_seconds, seconds_spent=round(elapsed, 2))
        def write_plan() -> None:
            save_pipeline_config(config, model_dir / PIPELINE_CONFIG)
            plan.save(model_dir)

        dist.on_chief(write_plan)  # train_loop reads pipeline.config: the others wait until the chief has written it
        echo(f"time budget {budget_seconds:.0f}s: measured {steps_per_sec:.2f} steps/s after {warm.final_step} steps"
             f" (evaluation {eval_seconds:.1f}s, restart {restart_seconds:.1f}s); planned {total} steps, "
             f"cosine schedule refitted (warm-up {warmup} steps) in {model_dir / PIPELINE_CONFIG}")
        if total <= warm.final_step:
            echo(f"time budget {budget_seconds:.0f}s: used up by the warm-up ({warm.final_step} steps); stopping there")
        started = time.time()
    if validator is not None:
        validator.every = eval_every or default_eval_every(plan.total_steps)
    deadline = started + max(0.0, plan.budget_seconds - plan.seconds_spent)
    target = plan.total_steps
    if warm is None and plan.seconds_spent >= plan.budget_seconds:
        target = min(target, checkpoint_step(latest_checkpoint(model_dir)))
        echo(f"time budget: all {plan.budget_seconds:.0f}s spent at step {target}; nothing to train "
             f"(delete {model_dir / BUDGET_FILE} to give the run a new budget)")
    result = train(model_dir, target, pipeline_config=config, validator=validator, deadline=deadline,
                   **train_options)
    plan.seconds_spent = round(plan.seconds_spent + time.time() - started, 2)
    if dist.is_chief:
        plan.save(model_dir)
    if warm is not None:  # one result for the whole run: the warm-up's steps come first
        result.history[:0] = warm.history
        result.start_step, result.seconds = warm.start_step, result.seconds + warm.seconds
    return result
