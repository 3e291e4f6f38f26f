"""``detserve export``: a checkpoint (or a TFOD2 SavedModel) -> a new verified version in a model repository."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from detserve.client.contract import DEFAULT_SIGNATURE
from detserve.training.logs import quiet_tensorflow

from .warmup import WARMUP_BATCHES

quiet_tensorflow()

if TYPE_CHECKING:
    from .gate import QualityGate

DEFAULT_MODEL_DIR = Path("runs/model")


@click.command("export")
@click.option("--model-dir", type=click.Path(path_type=Path), default=None,
              help=f"Training directory with pipeline.config and checkpoints (its best/ from validation is exported, else the latest). "
                   f"Default: {DEFAULT_MODEL_DIR}.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint prefix (e.g. DIR/ckpt-12) or a directory of checkpoints. Default: <model-dir>/best/, else the latest in --model-dir.")
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
@click.option("--min-map", type=click.FloatRange(0.0, 1.0), default=None,
              help="Quality gate: evaluate the verified candidate on --data and publish nothing unless its COCO mAP "
                   "(.50:.95) is at least this (0 measures without a floor).")
@click.option("--min-map50", type=click.FloatRange(0.0, 1.0), default=None,
              help="Quality gate: the same with mAP@.50IOU.")
@click.option("--data", "gate_data", type=click.Path(path_type=Path), default=None,
              help="Quality gate: a `detserve data` directory (<split>-*.tfrecord, label_map.pbtxt, which must be the "
                   "model's id for id).")
@click.option("--split", "gate_split", default=None,
              help="Quality gate: the split of --data to evaluate. Default: val, or test when there are no val shards.")
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
                   "Default: the shipped configs --warmup-for names.")
@click.option("--warmup-for", "warmup_for", type=click.Choice(["all", "cpu", "gpu"]), default="all", show_default=True,
              help="Servers that will load the version, whose shipped batching configs the warmup covers: all "
                   "(CPU and GPU servers share the repository: up to the smaller max_batch_size), or only gpu or "
                   "cpu (every batch size that server forms).")
@click.option("--warmup-batches", "warmup_batches", type=click.Choice(list(WARMUP_BATCHES)), default="all",
              show_default=True,
              help="Which of those batch sizes get a warmup record: all (GPU servers: each shape builds its own "
                   "kernels), or only the smallest or the largest (CPU servers: a fraction of the load time and "
                   "of the CPU a version swap takes from live requests, smallest the least; each other size's "
                   "first request then costs 7-54 ms more).")
@click.option("--format", "output_format", type=click.Choice(["saved_model", "tflite"]), default="saved_model",
              show_default=True,
              help="saved_model: a version in --repository for TF Serving. tflite: <tflite-dir>/<name>-<quantize>.tflite "
                   "(+ .json sidecar, label map) for phones and edge boxes, from --model-dir/--checkpoint.")
@click.option("--quantize", type=click.Choice(["float16", "int8"]), default=None,
              help="With --format tflite: float16 weights (default), or int8 weights and activations calibrated on "
                   "training images.")
@click.option("--tflite-dir", type=click.Path(path_type=Path), default=Path("tflite"), show_default=True,
              help="With --format tflite: where the .tflite, its sidecar and the label map are written.")
@click.option("--calibration-data", type=click.Path(path_type=Path), default=None,
              help="With --quantize int8: a `detserve data` directory whose train split calibrates (default: "
                   "pipeline.config's train input).")
@click.option("--calibration-images", type=click.IntRange(min=1), default=100, show_default=True,
              help="With --quantize int8: how many training images calibrate.")
def export(model_dir: Path | None, checkpoint: Path | None, pipeline_config: Path | None, repository: Path,
           name: str, version: int | None, keep: int | None, saved_model: Path | None, signature: str,
           label_map: Path | None, serving_configs: tuple[Path, ...], batching_configs: tuple[Path, ...],
           warmup_for: str, warmup_batches: str, min_map: float | None, min_map50: float | None, gate_data: Path | None,
           gate_split: str | None, output_format: str = "saved_model", quantize: str | None = None,
           tflite_dir: Path = Path("tflite"), calibration_data: Path | None = None,
           calibration_images: int = 100) -> None:
    """Write a trained detector into a TF Serving model repository as <repository>/<name>/<version>/.

    The version holds a SavedModel with the signatures serving_default (uint8 images, any batch),
    serving_bytes (encoded JPEG/PNG strings) and model_info, the label map in assets/ and warmup requests
    in assets.extra/. It is built in a hidden directory, verified in a fresh process with plain TensorFlow
    against the source model, and only then renamed into place: a failed export leaves nothing behind.

    --format tflite writes <tflite-dir>/<name>-<quantize>.tflite (+ its .json sidecar and the label map) instead.
    """
    from .errors import ExportError
    from .exporter import adopt_saved_model, default_batching_configs, export_checkpoint
    from .gate import REFUSED_EXIT_CODE, GateRefused
    from .repository import RepositoryError
    from .summary import format_summary

    if output_format == "tflite":
        _export_tflite(model_dir, checkpoint, pipeline_config, name, label_map, quantize or "float16", tflite_dir,
                       calibration_data, calibration_images)
        return
    _refuse_given(_TFLITE_ONLY, "only with --format tflite")
    for path in (*serving_configs, *batching_configs):
        if not path.is_file():
            raise click.ClickException(f"config not found: {path}")
    if batching_configs and warmup_for != "all":
        raise click.UsageError("--warmup-for picks shipped batching configs; do not combine it with --batching-config")
    if warmup_batches != "all" and warmup_for == "gpu":
        raise click.UsageError(f"--warmup-batches {warmup_batches} is for CPU servers: a GPU server builds and "
                               "autotunes kernels for each batch shape, so warm every size (--warmup-batches all)")
    if warmup_batches != "all" and warmup_for == "all" and not batching_configs:
        click.echo(f"note: --warmup-batches {warmup_batches} with --warmup-for all: GPU servers loading this version will "
                   "build kernels for the other batch sizes on their first requests; use --warmup-for cpu for a "
                   "repository only CPU servers load", err=True)
    if not batching_configs and warmup_for != "all":
        batching_configs = tuple(default_batching_configs(warmup_for))
        if not batching_configs:  # an install without the serving package's configs: never warm the wrong sizes
            raise click.ClickException(f"--warmup-for {warmup_for}: the shipped batching config was not found "
                                       "(serving/batching*.config); pass it with --batching-config")
    common = dict(version=version, keep=keep, label_map=label_map,
                  serving_configs=list(serving_configs) or None, batching_configs=list(batching_configs) or None,
                  warmup_batches=warmup_batches,
                  echo=lambda message: click.echo(message, err=True))
    if label_map is not None and not label_map.is_file():
        raise click.ClickException(f"label map not found: {label_map}")
    common["gate"] = _quality_gate(gate_data, min_map, min_map50, gate_split)
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
            pipeline_config, source = _checkpoint_source(model_dir, checkpoint, pipeline_config)
            result = export_checkpoint(pipeline_config, source, repository, name, **common)
    except (ExportError, RepositoryError) as error:
        failure = click.ClickException(str(error).splitlines()[0])
        if isinstance(error, GateRefused):
            failure.exit_code = REFUSED_EXIT_CODE  # a verdict on the model: retrying the same run cannot change it
        raise failure from error
    click.echo(format_summary(result))


def _checkpoint_source(model_dir: Path | None, checkpoint: Path | None,
                       pipeline_config: Path | None) -> tuple[Path, Path]:
    """(pipeline config, checkpoint or model directory) of --model-dir/--checkpoint/--pipeline-config, checked."""
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
    if checkpoint is None:
        from detserve.training.validation import model_dir_checkpoint

        checkpoint, which = model_dir_checkpoint(model_dir)
        click.echo(which, err=True)  # stderr: stdout carries the summary
    return pipeline_config, checkpoint


def _quality_gate(data: Path | None, min_map: float | None, min_map50: float | None,
                  split: str | None) -> QualityGate | None:
    """The checked gate of --min-map/--min-map50 on --data, or None; cheap, so it fails before anything is built."""
    if data is None:
        if min_map is not None or min_map50 is not None or split is not None:
            raise click.UsageError("--min-map, --min-map50 and --split evaluate the candidate on --data: pass --data DIR")
        return None
    if min_map is None and min_map50 is None:
        raise click.UsageError("--data is the quality gate's data: pass --min-map and/or --min-map50 (0 only measures)")
    from .errors import ExportError
    from .gate import prepare_gate

    try:
        return prepare_gate(data, min_map, min_map50, split)
    except ExportError as error:
        raise click.ClickException(str(error)) from error


# Options of one format only: given with the other, they are refused rather than silently ignored.
_REPOSITORY_ONLY = ("repository", "version", "keep", "min_map", "min_map50", "gate_data", "gate_split", "saved_model",
                    "signature", "serving_configs", "batching_configs", "warmup_for", "warmup_batches")
_TFLITE_ONLY = ("quantize", "tflite_dir", "calibration_data", "calibration_images")


def _refuse_given(names: tuple[str, ...], why: str) -> None:
    """UsageError naming those of the options ``names`` that the command line (or the environment) set."""
    context = click.get_current_context()
    given = [param.opts[0] for param in context.command.params if param.name in names
             and context.get_parameter_source(param.name) is not click.core.ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(f"{why}: {', '.join(given)}")


def _export_tflite(model_dir: Path | None, checkpoint: Path | None, pipeline_config: Path | None, name: str,
                   label_map: Path | None, quantize: str, tflite_dir: Path, calibration_data: Path | None,
                   calibration_images: int) -> None:
    """``--format tflite``: detserve.export.tflite on the checkpoint; the summary on stdout."""
    _refuse_given(_REPOSITORY_ONLY, "not with --format tflite (it writes a file from a checkpoint, not a "
                                    "repository version)")
    if calibration_data is not None and quantize != "int8":
        raise click.UsageError("--calibration-data calibrates --quantize int8")
    pipeline_config, source = _checkpoint_source(model_dir, checkpoint, pipeline_config)
    if label_map is not None and not label_map.is_file():
        raise click.ClickException(f"label map not found: {label_map}")
    if calibration_data is not None and not calibration_data.exists():
        raise click.ClickException(f"calibration data not found: {calibration_data}")
    from .errors import ExportError
    from .tflite import export_tflite, format_tflite_summary

    try:
        result = export_tflite(pipeline_config, source, tflite_dir, name, quantize,
                               label_map=label_map, calibration_data=calibration_data,
                               calibration_images=calibration_images, echo=lambda message: click.echo(message, err=True))
    except ExportError as error:
        raise click.ClickException(str(error).splitlines()[0]) from error
    click.echo(format_tflite_summary(result))
