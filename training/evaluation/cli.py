"""``detserve evaluate``: COCO metrics of a training checkpoint, an exported SavedModel or a served model."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import click

from detserve.client.contract import LABEL_MAP_FILENAME, label_map_file
from detserve.client.retry import DEFAULT_TIMEOUT

from ..logs import quiet_tensorflow

quiet_tensorflow()

from ..pipeline_config import PIPELINE_CONFIG, load_pipeline_config
from .evaluate import DEFAULT_SPLIT, GRID_IMAGES, SCORE_THRESHOLD
from .evaluate import evaluate as run_evaluation


def _load_pipeline_config(path: Path):
    from google.protobuf import text_format

    try:
        return load_pipeline_config(path)
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise click.ClickException(f"cannot parse {path}: {error}") from error


def _eval_input_from_pipeline(config, path: Path) -> tuple[str, str]:
    """(eval TFRecord pattern, label map path) from pipeline.config's first eval_input_reader."""
    readers = config.eval_input_reader
    if not readers or not readers[0].tf_record_input_reader.input_path:
        raise click.ClickException(f"{path} has no eval_input_reader with a tf_record input_path; pass --data")
    reader = readers[0]
    return reader.tf_record_input_reader.input_path[0], reader.label_map_path


def _read_label_map(path: Path) -> dict[int, str]:
    from ..data.label_map import LabelMapError, read_label_map

    if not path.is_file():
        raise click.ClickException(f"label map not found: {path}")
    try:
        return read_label_map(path)
    except LabelMapError as error:
        raise click.ClickException(str(error)) from error


@click.command("evaluate")
@click.option("--model-dir", type=click.Path(path_type=Path),
              help="Training directory with pipeline.config and checkpoints (its best/ from validation is evaluated, else the latest).")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint prefix (e.g. DIR/ckpt-12) or a directory of checkpoints. Default: <model-dir>/best/, else the latest in --model-dir.")
@click.option("--pipeline-config", type=click.Path(path_type=Path),
              help="TFOD2 pipeline.config. Default: <model-dir>/pipeline.config.")
@click.option("--model", "saved_model", type=click.Path(path_type=Path),
              help="Exported SavedModel directory (<repository>/<name>/<version>), or a .tflite `detserve export "
                   "--format tflite` wrote, instead of a checkpoint; needs --data. "
                   "With --server: the served model's name (default: detector).")
@click.option("--server", default=None, metavar="URL",
              help="Evaluate the model a TF Serving endpoint serves (grpc://host:8500, http://host:8501, grpcs://, "
                   "https://) through the client; needs --data and --out.")
@click.option("--version", "model_version", type=int, default=None, help="With --server: the version (default: newest).")
@click.option("--version-label", default=None, help="With --server: a version label (e.g. stable, canary).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="With --server: images per Predict request.")
@click.option("--encoding", type=click.Choice(["raw", "png", "jpeg", "stored"]), default="raw", show_default=True,
              help="With --server: how images travel. raw: uint8 pixels the client resizes as the graph does "
                   "(the in-process metrics, within rounding); png / jpeg: those pixels encoded; stored: the "
                   "TFRecords' JPEG/PNG bytes as they are, decoded by the server (TensorFlow's fast IDCT, not "
                   "Pillow's: a few levels apart).")
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True,
              help="With --server: deadline per request, retries included, seconds.")
@click.option("--data", type=click.Path(path_type=Path),
              help="Data directory with <split>-*.tfrecord and label_map.pbtxt. Default: pipeline.config's eval input.")
@click.option("--split", default=None, help=f"Split to evaluate in --data (default: {DEFAULT_SPLIT}).")
@click.option("--label-map", type=click.Path(path_type=Path),
              help="label_map.pbtxt. Default: <data>/label_map.pbtxt, pipeline.config's, or <model>/assets/label_map.pbtxt.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output directory for metrics.json and PNGs. Default: <model-dir>/eval.")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Evaluate only the first N images.")
@click.option("--grid-images", type=click.IntRange(min=0), default=GRID_IMAGES, show_default=True,
              help="Test images drawn in detections_grid.png.")
@click.option("--score-threshold", type=click.FloatRange(0.0, 1.0), default=SCORE_THRESHOLD, show_default=True,
              help="Lowest score drawn in the grid and counted in the confusion matrix (the COCO metrics use every "
                   "detection).")
@click.option("--ignore-difficult", is_flag=True,
              help="Treat 'difficult' objects as COCO crowd (ignored) instead of ordinary ground truth as TFOD2 does.")
def evaluate(
    model_dir: Path | None,
    checkpoint: Path | None,
    pipeline_config: Path | None,
    saved_model: Path | None,
    server: str | None,
    model_version: int | None,
    version_label: str | None,
    batch_size: int,
    encoding: str,
    timeout: float,
    data: Path | None,
    split: str | None,
    label_map: Path | None,
    out: Path | None,
    max_images: int | None,
    grid_images: int,
    score_threshold: float,
    ignore_difficult: bool,
) -> None:
    """COCO detection metrics (pycocotools) on the test split.

    Prints TFOD2's metric table with per-class AP@.50 and writes metrics.json, a precision-recall
    curve per class, a grid of test images with ground truth and predictions and a confusion matrix
    into --out. The model's classes must match the data's label map id for id (else the scores would be wrong).
    """
    if server is not None:
        if model_dir or checkpoint or pipeline_config:
            raise click.UsageError("--server evaluates a served model; do not combine it with "
                                   "--model-dir/--checkpoint/--pipeline-config")
        make_predictor, model_info, pattern, label_map_path, out, truth_path = _served_setup(
            server, str(saved_model) if saved_model else "detector", model_version, version_label, batch_size,
            encoding, timeout, data, split, label_map, out)
    elif saved_model is not None:
        if model_dir or checkpoint or pipeline_config:
            raise click.UsageError("--model evaluates a SavedModel; do not combine it with --model-dir/--checkpoint/--pipeline-config")
        make_predictor, model_info, pattern, label_map_path, out, truth_path = _saved_model_setup(saved_model, data, split, label_map, out)
    else:
        make_predictor, model_info, pattern, label_map_path, out, truth_path = _checkpoint_setup(
            model_dir, checkpoint, pipeline_config, data, split, label_map, out)
    # Cheap checks first: building a model takes seconds.
    labels = _read_label_map(label_map_path)
    truth = labels if truth_path == label_map_path else _read_label_map(truth_path)
    _require_records(pattern)

    from detserve.client.errors import DetserveClientError

    from .report import METRICS_FILENAME, format_table, read_metrics_json

    with ExitStack() as resources:  # a served model's channel is closed however the evaluation ends
        predictor, model_classes, model_info = make_predictor(model_info, resources)
        _check_classes(model_classes, model_info, truth, truth_path)
        try:
            metrics = run_evaluation(
                predictor, pattern, labels, out, max_images=max_images, grid_images=grid_images,
                score_threshold=score_threshold, ignore_difficult=ignore_difficult,
                model_info={**model_info, "label_map": str(label_map_path)},
            )
        except (FileNotFoundError, ValueError) as error:  # e.g. a checkpoint that does not fit the pipeline config
            raise click.ClickException(str(error)) from error
        except DetserveClientError as error:  # the server went away or refused a batch mid-run
            raise click.ClickException(f"{type(error).__name__}: {error}") from None
    document = read_metrics_json(out / METRICS_FILENAME)
    click.echo(format_table(metrics, title=f"COCO detection metrics on {document['num_images']} images ({pattern})"))
    click.echo(f"wrote {out / METRICS_FILENAME} and PNGs in {out}")


def _check_classes(model_classes: tuple[dict[int, str], str] | None, model_info: dict,
                   labels: dict[int, str], label_map_path: Path) -> None:
    """Stop unless the model's classes (and where they were read) match the label map the data is scored with."""
    from ..data.label_map import label_map_mismatch

    if model_classes is None:
        click.echo(f"warning: the model's class names are unknown ({model_info['kind']}): cannot check them against "
                   f"{label_map_path}; its class ids are assumed to be the data's", err=True)
        return
    problem = label_map_mismatch(model_classes[0], labels, model_classes[1], str(label_map_path))
    if problem:
        raise click.ClickException(problem)


def _require_records(pattern: str) -> None:
    import tensorflow as tf

    if not tf.io.gfile.glob(pattern):
        raise click.ClickException(f"no TFRecord files match {pattern}")


def _data_and_label_map(data: Path, split: str | None, label_map: Path | None) -> tuple[str, Path]:
    from ..data.tfrecord import split_pattern

    if not data.is_dir():
        raise click.ClickException(f"data directory not found: {data}")
    return split_pattern(data, split or DEFAULT_SPLIT), label_map or data / LABEL_MAP_FILENAME


def _saved_model_setup(saved_model: Path, data: Path | None, split: str | None, label_map: Path | None, out: Path | None):
    if saved_model.suffix == ".tflite":
        return _tflite_setup(saved_model, data, split, label_map, out)
    if not (saved_model / "saved_model.pb").is_file():
        raise click.ClickException(f"no SavedModel at {saved_model} (missing saved_model.pb)")
    if data is None:
        raise click.UsageError("--model needs --data (a directory with <split>-*.tfrecord)")
    if out is None:
        raise click.UsageError("--model needs --out (the SavedModel directory is left untouched)")
    pattern, data_label_map = _data_and_label_map(data, split, None)
    bundled = label_map_file(saved_model)
    if label_map is None:
        # An exported model carries its label map (checked against the data's); fall back to the data's.
        label_map = bundled if bundled.is_file() else data_label_map

    def make_predictor(model_info: dict, resources: ExitStack):
        from .predictors import saved_model_predictor

        try:
            predictor = saved_model_predictor(saved_model)
        except ValueError as error:  # no such signature, or not an image input
            raise click.ClickException(str(error)) from error
        classes = (_read_label_map(bundled), str(bundled)) if bundled.is_file() else None
        return predictor, classes, model_info

    # The ids in the TFRecords are the data's label map's: the model's classes are checked against it.
    truth = data_label_map if data_label_map.is_file() else label_map
    return make_predictor, {"kind": "saved_model", "path": str(saved_model)}, pattern, label_map, out, truth


def _tflite_setup(tflite: Path, data: Path | None, split: str | None, label_map: Path | None, out: Path | None):
    """A .tflite with its sidecar (training.evaluation.tflite_predictor); its label map is the one beside it."""
    from .tflite_predictor import TFLiteMetadata, TFLiteModelError, metadata_path

    if not tflite.is_file():
        raise click.ClickException(f"TFLite model not found: {tflite}")
    if data is None or out is None:
        raise click.UsageError("--model with a .tflite needs --data and --out")
    try:
        bundled = tflite.parent / TFLiteMetadata.read(metadata_path(tflite)).label_map
    except TFLiteModelError as error:
        raise click.ClickException(str(error)) from error
    pattern, data_label_map = _data_and_label_map(data, split, None)
    label_map = label_map or (bundled if bundled.is_file() else data_label_map)

    def make_predictor(model_info: dict, resources: ExitStack):
        from .tflite_predictor import tflite_predictor

        try:
            predictor = tflite_predictor(tflite)
        except TFLiteModelError as error:
            raise click.ClickException(str(error)) from error
        classes = (_read_label_map(bundled), str(bundled)) if bundled.is_file() else None
        return predictor, classes, model_info

    truth = data_label_map if data_label_map.is_file() else label_map
    return make_predictor, {"kind": "tflite", "path": str(tflite)}, pattern, label_map, out, truth


def _checkpoint_setup(model_dir: Path | None, checkpoint: Path | None, pipeline_config: Path | None,
                      data: Path | None, split: str | None, label_map: Path | None, out: Path | None):
    if model_dir is None and (checkpoint is None or pipeline_config is None):
        raise click.UsageError("pass --model-dir (or both --checkpoint and --pipeline-config), or --model")
    if model_dir is not None and not model_dir.is_dir():
        raise click.ClickException(f"model directory not found: {model_dir}")
    pipeline_config = pipeline_config or model_dir / PIPELINE_CONFIG
    if not pipeline_config.is_file():
        raise click.ClickException(f"pipeline config not found: {pipeline_config}")

    # TFOD2 must be made importable before TensorFlow is first imported in this process.
    from .. import tfod_compat  # noqa: F401
    from ..checkpoints import resolve_checkpoint
    from .predictors import checkpoint_predictor

    config = _load_pipeline_config(pipeline_config)  # the one parse of this command

    checkpoint_source = checkpoint
    if checkpoint_source is None:
        from ..validation import model_dir_checkpoint

        checkpoint_source, which = model_dir_checkpoint(model_dir)
        click.echo(which)
    try:
        prefix = resolve_checkpoint(checkpoint_source)
    except FileNotFoundError as error:
        raise click.ClickException(str(error)) from error

    if data is not None:
        pattern, default_label_map = _data_and_label_map(data, split, label_map)
    else:
        eval_path, config_label_map = _eval_input_from_pipeline(config, pipeline_config)
        if split is not None:
            # Same data directory as the pipeline's eval input, another split.
            from ..data.tfrecord import split_pattern

            eval_path = split_pattern(Path(eval_path).parent, split)
        if not config_label_map:
            raise click.ClickException(f"{pipeline_config} has no eval_input_reader label_map_path; pass --label-map")
        pattern, default_label_map = eval_path, Path(config_label_map)
    label_map = label_map or default_label_map
    out = out or (model_dir / "eval" if model_dir is not None else Path(prefix).parent / "eval")

    # The model's classes: the label map it was trained with (pipeline.config's train input).
    trained_with = Path(config.train_input_reader.label_map_path) if config.train_input_reader.label_map_path else None

    def make_predictor(model_info: dict, resources: ExitStack):
        try:
            predictor = checkpoint_predictor(pipeline_config, prefix, config)
        except ValueError as error:  # model_builder's complaints about the config
            raise click.ClickException(f"cannot build the model of {pipeline_config}: {error}") from error
        classes = None
        if trained_with is not None and trained_with.is_file():
            classes = (_read_label_map(trained_with), f"{trained_with}, the training label map of {pipeline_config}")
        return predictor, classes, model_info

    model_info = {"kind": "checkpoint", "checkpoint": prefix, "pipeline_config": str(pipeline_config)}
    return make_predictor, model_info, pattern, label_map, out, label_map


def _served_setup(server: str, name: str, version: int | None, version_label: str | None, batch_size: int,
                  encoding: str, timeout: float, data: Path | None, split: str | None, label_map: Path | None,
                  out: Path | None):
    if data is None:
        raise click.UsageError("--server needs --data (a directory with <split>-*.tfrecord and label_map.pbtxt)")
    if out is None:
        raise click.UsageError("--server needs --out (where metrics.json and the PNGs go)")
    pattern, label_map = _data_and_label_map(data, split, label_map)

    def make_predictor(model_info: dict, resources: ExitStack):
        from detserve.client import Detector
        from detserve.client.errors import DetserveClientError

        from .predictors import served_predictor

        try:
            # Stored bytes go to the encoded-image signature as they are (the client passes JPEG/PNG through).
            detector = resources.enter_context(Detector(
                server, name, version, version_label, timeout=timeout, max_batch_size=batch_size,
                encoding="jpeg" if encoding == "stored" else encoding))
            meta = detector.metadata(class_names=True)
        except ValueError as error:  # a malformed --server
            raise click.BadParameter(str(error), param_hint="--server") from None
        except DetserveClientError as error:
            raise click.ClickException(f"{type(error).__name__}: {error}") from None
        info = {**model_info, "model": meta.model, "version": meta.version, "encoding": encoding}
        classes = (meta.class_names, f"model {meta.model!r} version {meta.version} at {detector.server}") \
            if meta.class_names else None
        return served_predictor(detector, batch_size, encoded=encoding == "stored"), classes, info

    return make_predictor, {"kind": "served", "server": server}, pattern, label_map, out, label_map
