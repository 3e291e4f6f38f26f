"""`detserve train`: pipeline.config from options, initialisation, TFOD2 training with progress."""

from __future__ import annotations

from pathlib import Path

import click

from .distribution import STRATEGIES
from .logs import quiet_tensorflow
from .options import (
    AUGMENTATIONS,
    CHECKPOINT_EVERY,
    DEFAULT_AUGMENTATIONS,
    MAX_WARMUP_STEPS,
    PRETRAINED_BATCH_NORM_DECAY,
    SCRATCH_BATCH_NORM_DECAY,
    WARMUP_DIVISOR,
    TrainingOptions,
)
from .validation import EVALS_PER_RUN

quiet_tensorflow()


def _augmentations(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def _pretrained(spec: str, sha256: str | None, depth_multiplier: float, image_size: int) -> tuple[str, float, int]:
    """The zoo model's checkpoint, width and input size; an explicit --depth-multiplier must match it, an
    explicit --image-size overrides it."""
    from .zoo import resolve_pretrained

    context = click.get_current_context()
    given = {name: context.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
             for name in ("depth_multiplier", "image_size")}
    try:
        model = resolve_pretrained(spec, sha256, depth_multiplier if given["depth_multiplier"] else None,
                                   echo=click.echo)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    size = image_size if given["image_size"] else model.image_size
    click.echo(f"pretrained {model.name}: depth multiplier {model.depth_multiplier}, image size {size} "
               + (f"(--image-size; the model's is {model.image_size})" if given["image_size"] else "(the model's)"))
    return model.checkpoint_prefix, model.depth_multiplier, size


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output of `detserve data`: TFRecords + label_map.pbtxt.")
@click.option("--model-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoints, pipeline.config and TensorBoard logs go here; an existing run is resumed.")
# Every default is TrainingOptions' (training/options.py), the one place they are stated.
@click.option("--steps", default=TrainingOptions.num_steps, show_default=True,
              help="Total training steps (including resumed ones).")
@click.option("--batch-size", default=TrainingOptions.batch_size, show_default=True)
@click.option("--learning-rate", default=TrainingOptions.learning_rate, show_default=True,
              help="Peak of the cosine schedule.")
@click.option("--warmup-steps", type=int, default=None,
              help=f"Linear warm-up steps [default: min({MAX_WARMUP_STEPS}, steps/{WARMUP_DIVISOR})].")
@click.option("--depth-multiplier", default=TrainingOptions.depth_multiplier, show_default=True,
              help="MobileNetV2 width (alpha); must equal the alpha of --backbone-weights.")
@click.option("--image-size", default=TrainingOptions.image_size, show_default=True)
@click.option("--anchor-scale", type=click.FloatRange(min=0, min_open=True, max=16), default=None,
              help="Smallest anchor side in FPN strides (the zoo's 4.0 = 32 px) [default: fitted to the train "
                   "boxes, 2.0-4.0; 4.0 from a detection checkpoint].")
@click.option("--augment", default=",".join(DEFAULT_AUGMENTATIONS), show_default=True,
              help=f"Comma-separated: {', '.join(AUGMENTATIONS)} (empty for none).")
@click.option("--backbone-weights", default=None,
              help="Keras MobileNetV2 ImageNet no_top .h5 file, or 'imagenet' to let Keras download it "
                   "(checked against the file's known sha256: alpha 0.35 and 0.5).")
@click.option("--backbone-weights-sha256", default=None, metavar="HEX",
              help="sha256 the --backbone-weights file must have: needed for `imagenet` at another alpha.")
@click.option("--fine-tune-checkpoint", default=None,
              help="TFOD2 detection checkpoint (zoo model) to start from, e.g. .../checkpoint/ckpt-0.")
@click.option("--pretrained", default=None, metavar="NAME|PATH",
              help="TF2 Detection Zoo model to start from, e.g. ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8 "
                   "(downloaded once, sha256-checked), or its local tarball/directory; sets the depth multiplier "
                   "and image size from the model.")
@click.option("--pretrained-sha256", default=None, metavar="HEX",
              help="sha256 the --pretrained tarball must have [default: the one recorded at its first download].")
@click.option("--batch-norm-decay", type=float, default=None,
              help=f"Batch-norm moving-average decay [default: {PRETRAINED_BATCH_NORM_DECAY} from pretrained "
                   f"weights, {SCRATCH_BATCH_NORM_DECAY} from scratch].")
@click.option("--checkpoint-every", default=CHECKPOINT_EVERY, show_default=True)
@click.option("--eval-every", type=click.IntRange(min=0), default=None,
              help=f"Steps between evaluations of COCO mAP on the val split (the best checkpoint is kept in "
                   f"<model-dir>/best/); 0 turns validation off [default: steps/{EVALS_PER_RUN}].")
@click.option("--early-stop-evals", type=click.IntRange(min=1), default=None, metavar="K",
              help="Stop when val mAP has not improved for K evaluations [default: never].")
@click.option("--time-budget", default=None, metavar="DURATION",
              help="Train for this long (2h, 45m, 90s): the step count and learning-rate schedule are derived from "
                   "the throughput measured after a warm-up; instead of --steps.")
@click.option("--seed", type=int, default=None,
              help="Seed weight initialisation, shuffling and augmentation for a repeatable run [default: unseeded].")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto", show_default=True,
              help="Devices and machines: auto = multi-worker under a TF_CONFIG of several tasks, mirrored with "
                   "more than one GPU, else one. --batch-size is the global batch, split across the replicas.")
@click.option("--mixed-precision", is_flag=True, default=False,
              help="Train in mixed_float16 with loss scaling (GPUs only; docs/training.md).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(data_dir: Path, model_dir: Path, steps: int, batch_size: int, learning_rate: float, warmup_steps: int | None,
          depth_multiplier: float, image_size: int, anchor_scale: float | None, augment: str, backbone_weights: str | None,
          backbone_weights_sha256: str | None, fine_tune_checkpoint: str | None, batch_norm_decay: float | None,
          checkpoint_every: int, seed: int | None, progress: bool, eval_every: int | None = None,
          early_stop_evals: int | None = None, time_budget: str | None = None, pretrained: str | None = None,
          pretrained_sha256: str | None = None, strategy: str = "auto", mixed_precision: bool = False) -> None:
    """Train SSD MobileNetV2 FPN-Lite with TFOD2 on the TFRecords in --data."""
    from tqdm import tqdm

    from .distribution import WorkerFailed, distribution
    from .mixed_precision import enable_mixed_precision
    from .pipeline_config import PIPELINE_CONFIG, load_pipeline_config
    from .run import TrainingRequest, prepare_run
    from .time_budget import parse_duration, read_plan, train_within_budget
    from .train import train as run_training
    from .validation import Validator, default_eval_every

    if backbone_weights and fine_tune_checkpoint:
        raise click.UsageError("give either --backbone-weights or --fine-tune-checkpoint, not both")
    if backbone_weights_sha256 and not backbone_weights:
        raise click.UsageError("--backbone-weights-sha256 checks --backbone-weights: give both")
    if early_stop_evals is not None and eval_every == 0:
        raise click.UsageError("--early-stop-evals needs validation: not with --eval-every 0")
    try:
        # First: a multi-worker strategy must exist before any other TensorFlow work in the process.
        dist = distribution(strategy)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--strategy") from error
    if mixed_precision:
        try:
            enable_mixed_precision()
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--mixed-precision") from error
    budget = None
    if time_budget is not None:
        if click.get_current_context().get_parameter_source("steps") is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError("--time-budget and --steps both set the run's length: give one of them")
        try:
            budget = parse_duration(time_budget)
            plan = read_plan(model_dir)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--time-budget") from error
        steps = plan.total_steps if plan is not None else steps  # a resumed budget run keeps its planned steps
    if pretrained and (backbone_weights or fine_tune_checkpoint):
        raise click.UsageError("--pretrained is the starting weights: give it without --backbone-weights and "
                               "--fine-tune-checkpoint")
    if pretrained_sha256 and not pretrained:
        raise click.UsageError("--pretrained-sha256 checks --pretrained: give both")
    if pretrained:
        fine_tune_checkpoint, depth_multiplier, image_size = _pretrained(pretrained, pretrained_sha256,
                                                                         depth_multiplier, image_size)
    request = TrainingRequest(
        data_dir=data_dir, model_dir=model_dir, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        warmup_steps=warmup_steps, depth_multiplier=depth_multiplier, image_size=image_size, anchor_scale=anchor_scale,
        augmentations=_augmentations(augment), backbone_weights=backbone_weights,
        backbone_weights_sha256=backbone_weights_sha256,
        fine_tune_checkpoint=fine_tune_checkpoint, batch_norm_decay=batch_norm_decay,
    )
    try:
        if dist.replicas > 1 or dist.workers > 1:
            click.echo(dist.describe())
        # The other workers read what the chief wrote (a shared --model-dir).
        config = dist.on_chief(lambda: prepare_run(request, echo=click.echo))
        if not dist.is_chief:
            config = load_pipeline_config(model_dir / PIPELINE_CONFIG)
        validator = None
        if eval_every != 0:
            # tqdm.write: one line per evaluation above the progress bar.
            validator = Validator.create(model_dir, config, eval_every or default_eval_every(steps),
                                         early_stop_evals, echo=tqdm.write)
        common = {"checkpoint_every": checkpoint_every, "progress": progress, "seed": seed, "strategy": strategy}
        if budget is not None:
            result = train_within_budget(model_dir, config, budget, validator=validator, eval_every=eval_every,
                                         warmup_steps=warmup_steps, echo=click.echo, **common)
        else:
            result = run_training(model_dir, steps, pipeline_config=config, validator=validator, **common)
        # Every worker waits for the chief's report: one that exited first would fail the chief's coordination.
        dist.on_chief(lambda: _report(result, model_dir))
    except (FileNotFoundError, ValueError, WorkerFailed) as error:
        raise click.ClickException(str(error)) from error
    if not dist.is_chief:
        click.echo(f"worker done at step {result.final_step}; the chief reports the run")


def _report(result, model_dir: Path) -> None:
    from .curves import CURVES_FILENAME, HISTORY_FILENAME, plot_training_curves
    from .run import report_training

    click.echo(report_training(result))
    # The picture people look at first: loss, learning rate and val mAP (detserve curves redraws it).
    try:
        click.echo(f"curves: {plot_training_curves(model_dir / HISTORY_FILENAME, model_dir / CURVES_FILENAME)}")
    except (FileNotFoundError, ValueError) as error:  # a run that trained nothing has nothing to draw
        click.echo(f"curves: not drawn ({error})", err=True)
