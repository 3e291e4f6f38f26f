"""``detserve export``: a checkpoint (or a TFOD2 SavedModel) -> a new verified version in a model repository."""

from __future__ import annotations

from pathlib import Path

import click

from detserve.client.contract import DEFAULT_SIGNATURE
from detserve.training.logs import quiet_tensorflow

quiet_tensorflow()

DEFAULT_MODEL_DIR = Path("runs/model")


@click.command("export")
@click.option("--model-dir", type=click.Path(path_type=Path), default=None,
              help=f"Training directory with pipeline.config and checkpoints (the latest is exported). "
                   f"Default: {DEFAULT_MODEL_DIR}.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint prefix (e.g. DIR/ckpt-12) or a directory of checkpoints. Default: latest in --model-dir.")
@click.option("--pipeline-config", type=click.Path(path_type=Path),
              help="TFOD2 pipeline.config. Default: <model-dir>/pipeline.config (with --from-saved-model: the "
                   "one TFOD2's exporter wrote beside saved_model/, if any).")
@click.option("--repository", type=click.Path(path_type=Path), default=Path("models"), show_default=True,
              help="Model repository root; TF Serving's base_path is <repository>/<name>.")
@click.option("--name", default="detector", show_default=True, help="Model name (the directory under --repository).")
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="Version number to write (refused if it exists). Default: one more than the highest present.")
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="After exporting, delete all but the N newest versions, except versions the serving configs "
                   "pin or label.")
@click.option("--from-saved-model", "saved_model", type=click.Path(path_type=Path),
              help="Adopt a SavedModel written by TFOD2's exporter (the export directory or its saved_model/) "
                   "instead of exporting a checkpoint.")
@click.option("--signature", default=DEFAULT_SIGNATURE, show_default=True,
              help="With --from-saved-model: the source signature to wrap.")
@click.option("--label-map", type=click.Path(path_type=Path),
              help="label_map.pbtxt. Default: pipeline.config's label_map_path.")
@click.option("--serving-config", "serving_configs", type=click.Path(path_type=Path), multiple=True,
              help="TF Serving ModelServerConfig whose pinned/labelled versions --keep never deletes (repeatable). "
                   "Default: serving/models*.config.")
@click.option("--batching-config", "batching_configs", type=click.Path(path_type=Path), multiple=True,
              help="TF Serving batching parameters; warmup covers the batch sizes all of them allow (repeatable). "
                   "Default: serving/batching.config and serving/batching-gpu.config.")
def export(model_dir: Path | None, checkpoint: Path | None, pipeline_config: Path | None, repository: Path,
           name: str, version: int | None, keep: int | None, saved_model: Path | None, signature: str,
           label_map: Path | None, serving_configs: tuple[Path, ...], batching_configs: tuple[Path, ...]) -> None:
    """Write a trained detector into a TF Serving model repository as <repository>/<name>/<version>/.

    The version holds a SavedModel with the signatures serving_default (uint8 images, any batch),
    serving_bytes (encoded JPEG/PNG strings) and model_info, the label map in assets/ and warmup requests
    in assets.extra/. It is built in a hidden directory, verified in a fresh process with plain TensorFlow
    against the source model, and only then renamed into place: a failed export leaves nothing behind.
    """
    from .errors import ExportError
    from .exporter import adopt_saved_model, export_checkpoint
    from .repository import RepositoryError
    from .summary import format_summary

    for path in (*serving_configs, *batching_configs):
        if not path.is_file():
            raise click.ClickException(f"config not found: {path}")
    common = dict(version=version, keep=keep, label_map=label_map,
                  serving_configs=list(serving_configs) or None, batching_configs=list(batching_configs) or None,
                  echo=lambda message: click.echo(message, err=True))
    if label_map is not None and not label_map.is_file():
        raise click.ClickException(f"label map not found: {label_map}")
    try:
        if saved_model is not None:
            if model_dir is not None or checkpoint is not None:
                raise click.UsageError("--from-saved-model adopts a SavedModel; do not combine it with --model-dir/--checkpoint")
            if not saved_model.exists():
                raise click.ClickException(f"SavedModel not found: {saved_model}")
            if pipeline_config is not None and not pipeline_config.is_file():
                raise click.ClickException(f"pipeline config not found: {pipeline_config}")
            result = adopt_saved_model(saved_model, repository, name, pipeline_config=pipeline_config,
                                       signature=signature, **common)
        else:
            if model_dir is None and checkpoint is None:
                model_dir = DEFAULT_MODEL_DIR
            if model_dir is not None and not model_dir.is_dir():
                raise click.ClickException(f"model directory not found: {model_dir} (train first: make train)")
            if pipeline_config is None:
                if model_dir is None:
                    raise click.UsageError("--checkpoint needs --pipeline-config or --model-dir")
                pipeline_config = model_dir / "pipeline.config"
            if not pipeline_config.is_file():
                raise click.ClickException(f"pipeline config not found: {pipeline_config}")
            result = export_checkpoint(pipeline_config, checkpoint or model_dir, repository, name, **common)
    except (ExportError, RepositoryError) as error:
        raise click.ClickException(str(error).splitlines()[0]) from error
    click.echo(format_summary(result))
