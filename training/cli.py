"""`detserve train`: pipeline.config from options, initialisation, TFOD2 training with progress."""

from __future__ import annotations

from pathlib import Path

import click

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

quiet_tensorflow()


def _augmentations(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


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
@click.option("--augment", default=",".join(DEFAULT_AUGMENTATIONS), show_default=True,
              help=f"Comma-separated: {', '.join(AUGMENTATIONS)} (empty for none).")
@click.option("--backbone-weights", default=None,
              help="Keras MobileNetV2 ImageNet no_top .h5 file, or 'imagenet' to let Keras download it "
                   "(checked against the file's known sha256: alpha 0.35 and 0.5).")
@click.option("--backbone-weights-sha256", default=None, metavar="HEX",
              help="sha256 the --backbone-weights file must have: needed for `imagenet` at another alpha.")
@click.option("--fine-tune-checkpoint", default=None,
              help="TFOD2 detection checkpoint (zoo model) to start from, e.g. .../checkpoint/ckpt-0.")
@click.option("--batch-norm-decay", type=float, default=None,
              help=f"Batch-norm moving-average decay [default: {PRETRAINED_BATCH_NORM_DECAY} from pretrained "
                   f"weights, {SCRATCH_BATCH_NORM_DECAY} from scratch].")
@click.option("--checkpoint-every", default=CHECKPOINT_EVERY, show_default=True)
@click.option("--seed", type=int, default=None,
              help="Seed weight initialisation, shuffling and augmentation for a repeatable run [default: unseeded].")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(data_dir: Path, model_dir: Path, steps: int, batch_size: int, learning_rate: float, warmup_steps: int | None,
          depth_multiplier: float, image_size: int, augment: str, backbone_weights: str | None,
          backbone_weights_sha256: str | None, fine_tune_checkpoint: str | None, batch_norm_decay: float | None,
          checkpoint_every: int, seed: int | None, progress: bool) -> None:
    """Train SSD MobileNetV2 FPN-Lite with TFOD2 on the TFRecords in --data."""
    from .run import TrainingRequest, prepare_run, report_training
    from .train import train as run_training

    if backbone_weights and fine_tune_checkpoint:
        raise click.UsageError("give either --backbone-weights or --fine-tune-checkpoint, not both")
    if backbone_weights_sha256 and not backbone_weights:
        raise click.UsageError("--backbone-weights-sha256 checks --backbone-weights: give both")
    request = TrainingRequest(
        data_dir=data_dir, model_dir=model_dir, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        warmup_steps=warmup_steps, depth_multiplier=depth_multiplier, image_size=image_size,
        augmentations=_augmentations(augment), backbone_weights=backbone_weights,
        backbone_weights_sha256=backbone_weights_sha256,
        fine_tune_checkpoint=fine_tune_checkpoint, batch_norm_decay=batch_norm_decay,
    )
    try:
        config = prepare_run(request, echo=click.echo)
        result = run_training(model_dir, steps, checkpoint_every=checkpoint_every, progress=progress, seed=seed,
                              pipeline_config=config)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(report_training(result))
