"""Export a trained detector as a new, verified version of a TF Serving model repository.

Two sources:

- ``export_checkpoint``: a TFOD2 training checkpoint + pipeline.config, rebuilt with TFOD2's model
  builder and traced with a dynamic batch dimension (TFOD2's exporter fixes it at 1).
- ``adopt_saved_model``: a SavedModel written by TFOD2's exporter (``exporter_main_v2``); a source fixed
  at batch 1 is run once per image of a batch.

Both write ``<repository>/<name>/<version>/`` (saved_model.pb, variables/, assets/label_map.pbtxt,
assets.extra/tf_serving_warmup_requests) through a hidden staging directory that is renamed into place
only after the staged SavedModel passed verification in a fresh process (see detserve.export.verify).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

# TFOD2 (pipeline.config protos, model builder) needs this before TensorFlow's first import.
import detserve.training.tfod_compat  # noqa: F401, I001

# isort: split
from detserve.client.contract import (
    DEFAULT_SIGNATURE,
    LABEL_ID_OFFSET,
    SERVE_TAG,
    is_internal_signature,
    label_map_file,
)
from detserve.export import repository as repo
from detserve.export.parity import MARGIN, MIN_TOLERANCE, Tolerance, measure_tolerance
from detserve.export.signatures import (
    DETECTION_SIGNATURES,
    INFO_INPUT,
    INFO_SIGNATURE,
    PREDICT_METHOD,
    SIGNATURES,
)
from detserve.export.warmup import WarmupInfo, warmup_batch_sizes, write_warmup_file

NUM_SAMPLES = 4
VERIFY_TIMEOUT_S = 900
Echo = Callable[[str], None]


class ExportError(RuntimeError):
    """An export that failed; nothing was published."""


@dataclass
class BuiltModel:
    """What a source builder leaves in the staging directory and tells the rest of the export."""

    source: str
    label_map: dict[int, str]
    label_map_text: str
    input_size: tuple[int, int] | None
    samples: list[np.ndarray]
    reference: list[dict[str, np.ndarray]]
    tolerance: Tolerance = field(default_factory=Tolerance)
    batch_mapped: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    version: int
    path: Path
    size_bytes: int
    source: str
    signatures: dict[str, dict]
    input_size: tuple[int, int] | None
    batch_mapped: bool
    warmup: WarmupInfo
    verification: dict
    pruned: list[int] = field(default_factory=list)
    protected: dict[int, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Defaults from the serving/ folder (package data of detserve.serving, so they resolve from any cwd).


def _serving_dir() -> Path | None:
    try:
        return Path(str(resources.files("detserve.serving")))
    except (ModuleNotFoundError, TypeError):
        return None


def default_serving_configs() -> list[Path]:
    """serving/models*.config: every ModelServerConfig whose pins and labels --keep must respect."""
    directory = _serving_dir()
    return sorted(directory.glob("models*.config")) if directory else []


def default_batching_configs() -> list[Path]:
    """serving/batching.config (CPU) and serving/batching-gpu.config (GPU)."""
    directory = _serving_dir()
    return [directory / "batching.config", directory / "batching-gpu.config"] if directory else []


# ------------------------------------------------------------------------------------------------
# Reading a SavedModel's signatures the way TF Serving's GetModelMetadata returns them.


def read_signature_defs(version_path: Path | str) -> dict:
    """{name: SignatureDef} of the ``serve`` MetaGraph in ``<version>/saved_model.pb``."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(version_path) / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return {name: meta_graph.signature_def[name] for name in sorted(meta_graph.signature_def)
                    if not is_internal_signature(name)}
    raise ExportError(f"{version_path}/saved_model.pb has no MetaGraph tagged 'serve'")


def _tensor_info(info) -> list:
    from tensorflow.dtypes import as_dtype

    dims = None if info.tensor_shape.unknown_rank else [int(d.size) for d in info.tensor_shape.dim]
    return [as_dtype(info.dtype).name, dims]


def describe_signatures(version_path: Path | str) -> dict[str, dict]:
    """{name: {"method": ..., "inputs": {key: [dtype, shape]}, "outputs": {...}}}, -1 = any size."""
    return {
        name: {
            "method": sd.method_name,
            "inputs": {key: _tensor_info(sd.inputs[key]) for key in sorted(sd.inputs)},
            "outputs": {key: _tensor_info(sd.outputs[key]) for key in sorted(sd.outputs)},
        }
        for name, sd in read_signature_defs(version_path).items()
    }


def model_input_size(version_path: Path | str) -> tuple[int, int] | None:
    """The model's input (height, width) from an exported version's ``model_info`` signature."""
    signature_defs = read_signature_defs(version_path)
    if INFO_SIGNATURE not in signature_defs:
        return None
    dims = [int(d.size) for d in signature_defs[INFO_SIGNATURE].inputs[INFO_INPUT].tensor_shape.dim]
    return (dims[1], dims[2]) if len(dims) == 4 and dims[1] > 0 and dims[2] > 0 else None


# ------------------------------------------------------------------------------------------------
# Pipeline config, label map and sample images.


def pipeline_input_size(pipeline_config: Path | str) -> tuple[int, int] | None:
    """(height, width) the model resizes every image to, from pipeline.config's image_resizer."""
    from detserve.training.pipeline_config import load_pipeline_config

    model = load_pipeline_config(pipeline_config).model
    meta = getattr(model, model.WhichOneof("model"))
    resizer = meta.image_resizer
    kind = resizer.WhichOneof("image_resizer_oneof")
    if kind == "fixed_shape_resizer":
        return int(resizer.fixed_shape_resizer.height), int(resizer.fixed_shape_resizer.width)
    if kind == "keep_aspect_ratio_resizer" and resizer.keep_aspect_ratio_resizer.pad_to_max_dimension:
        size = int(resizer.keep_aspect_ratio_resizer.max_dimension)
        return size, size
    return None


def _pipeline_num_classes(pipeline_config: Path | str) -> int | None:
    from detserve.training.pipeline_config import load_pipeline_config

    model = load_pipeline_config(pipeline_config).model
    return int(getattr(model, model.WhichOneof("model")).num_classes)


def pipeline_nms(pipeline_config: Path | str | None) -> tuple[float | None, bool, float]:
    """(IoU threshold, class-agnostic, score threshold) of the model's non-max suppression, from pipeline.config;
    (None, False, 0.0) when there is no config or it names no NMS (the comparison then assumes TFOD2's SSD 0.6)."""
    if pipeline_config is None:
        return None, False, 0.0
    from detserve.training.pipeline_config import load_pipeline_config

    model = load_pipeline_config(pipeline_config).model
    meta = getattr(model, model.WhichOneof("model") or "", None)
    post = getattr(meta, "post_processing", None) or getattr(meta, "second_stage_post_processing", None)
    if post is None or not post.HasField("batch_non_max_suppression"):
        return None, False, 0.0
    nms = post.batch_non_max_suppression
    return float(nms.iou_threshold), bool(nms.use_class_agnostic_nms), float(nms.score_threshold)


def _pipeline_paths(pipeline_config: Path | str) -> tuple[str | None, str | None]:
    """(label_map_path, eval TFRecord pattern) named in pipeline.config, if any."""
    from detserve.training.pipeline_config import load_pipeline_config

    config = load_pipeline_config(pipeline_config)
    readers = list(config.eval_input_reader) + [config.train_input_reader]
    label_map = next((r.label_map_path for r in readers if r.label_map_path), None)
    pattern = None
    for reader in config.eval_input_reader:
        if reader.tf_record_input_reader.input_path:
            pattern = reader.tf_record_input_reader.input_path[0]
            break
    return label_map, pattern


def load_label_map(path: Path | str) -> tuple[dict[int, str], str]:
    from detserve.training.data.label_map import LabelMapError, read_label_map

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"label map not found: {path}")
    try:
        return read_label_map(path), path.read_text()
    except LabelMapError as error:
        raise ExportError(str(error)) from error


def _check_label_map(label_map: Mapping[int, str], num_classes: int | None, source: str) -> None:
    if num_classes is None:
        return
    expected = set(range(LABEL_ID_OFFSET, num_classes + LABEL_ID_OFFSET))
    if set(label_map) != expected:
        raise ExportError(f"label map {source} has ids {sorted(label_map)} but the model has {num_classes} classes "
                          f"(ids 1..{num_classes}); pass the label map it was trained with (--label-map)")


def synthetic_samples(count: int = NUM_SAMPLES, seed: int = 0) -> list[np.ndarray]:
    """Deterministic test images (noise, bright rectangles and disks) in two sizes."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        height, width = (240, 320) if index % 2 == 0 else (300, 260)
        image = rng.integers(40, 120, (height, width, 3), dtype=np.uint8)
        for _ in range(3):
            y, x = int(rng.integers(0, height - 60)), int(rng.integers(0, width - 60))
            h, w = int(rng.integers(30, 60)), int(rng.integers(30, 60))
            image[y:y + h, x:x + w] = rng.integers(150, 256, 3, dtype=np.uint8)
        images.append(image)
    return images


def with_resized_copies(images: list[np.ndarray], size: tuple[int, int] | None) -> list[np.ndarray]:
    """``images`` and copies resized to the model's input size (320x320 if unknown): what clients send, and
    equal-size images for the batch-parity check (see detserve.export.parity.parity_rows)."""
    from PIL import Image

    height, width = size or (320, 320)
    return list(images) + [np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
                           for image in images if image.shape[:2] != (height, width)]


def sample_images(eval_pattern: str | None, count: int = NUM_SAMPLES) -> tuple[list[np.ndarray], str]:
    """Up to ``count`` images of the evaluation split (real inputs give real detections), else synthetic ones."""
    if eval_pattern:
        import tensorflow as tf

        if tf.io.gfile.glob(eval_pattern):
            from detserve.training.data.tfrecord import read_examples

            images = []
            for example in read_examples(eval_pattern):
                images.append(example.image)
                if len(images) == count:
                    break
            if len(images) == count:
                return images, f"{len(images)} images of {eval_pattern}"
            if images:  # too few for a batch of distinct images: topped up
                extra = count - len(images)
                return images + synthetic_samples(extra), f"{len(images)} images of {eval_pattern} and {extra} synthetic"
    return synthetic_samples(count), f"{count} synthetic images"


# ------------------------------------------------------------------------------------------------
# Sources.


def _numpy(outputs: Mapping) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in outputs.items()}


def _step(prefix: str) -> str:
    """'step N' for a training checkpoint; 'no step' for one without (e.g. TFOD2's exported checkpoint)."""
    import tensorflow as tf

    from detserve.training.checkpoints import checkpoint_step

    try:
        return f"step {checkpoint_step(prefix)}"
    except tf.errors.NotFoundError:  # the checkpoint has no step variable
        return "no step"


def checkpoint_builder(pipeline_config: Path, checkpoint: Path | str, label_map_path: Path | None,
                       echo: Echo) -> Callable[[Path], BuiltModel]:
    """Rebuild the TFOD2 model of ``pipeline_config`` with the checkpoint's weights and save it with
    detserve's signatures."""

    def build(staged: Path) -> BuiltModel:
        import tensorflow as tf

        from detserve.export.signatures import build_module, checkpoint_detect_fns
        from detserve.training.evaluation.predictors import (
            checkpoint_mismatch,
            exporter_path_detect,
            restore_detection_model,
        )

        config_label_map, eval_pattern = _pipeline_paths(pipeline_config)
        chosen = label_map_path or (Path(config_label_map) if config_label_map else None)
        if chosen is None:
            raise ExportError(f"{pipeline_config} names no label_map_path; pass --label-map")
        label_map, label_map_text = load_label_map(chosen)
        _check_label_map(label_map, _pipeline_num_classes(pipeline_config), str(chosen))
        input_size = pipeline_input_size(pipeline_config)

        try:
            model, status, prefix = restore_detection_model(pipeline_config, checkpoint)
        except FileNotFoundError as error:
            raise ExportError(str(error)) from error
        checkpoint_name = f"{prefix} ({_step(prefix)})"
        echo(f"building the model of {pipeline_config} with {checkpoint_name}"
             + (f", input {input_size[0]}x{input_size[1]}" if input_size else ""))
        detect_images, detect_encoded = checkpoint_detect_fns(model, input_size)
        try:
            module, signatures = build_module(detect_images, detect_encoded, label_map, input_size, {"model": model})
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
            raise ExportError(str(checkpoint_mismatch(prefix, pipeline_config, error))) from error

        samples, described = sample_images(eval_pattern)
        samples = with_resized_copies(samples, input_size)
        echo(f"reference detections of the checkpoint model on {described} and their resized copies")
        # The source is the restored model on TFOD2's exporter path, not detserve's signatures around it.
        source = exporter_path_detect(model)
        reference = [_numpy(source(tf.constant(image[np.newaxis]))) for image in samples]
        tolerance = measure_tolerance(lambda batch: _numpy(source(tf.constant(batch))), samples, reference,
                                      *pipeline_nms(pipeline_config))
        echo("saving the SavedModel")
        tf.saved_model.save(module, str(staged), signatures=signatures)
        return BuiltModel(source=f"checkpoint {checkpoint_name} + {pipeline_config}",
                          label_map=label_map, label_map_text=label_map_text, input_size=input_size,
                          samples=samples, reference=reference, tolerance=tolerance)

    return build


def find_saved_model(path: Path) -> Path:
    """A SavedModel directory, or a TFOD2 export directory holding ``saved_model/``."""
    if (path / "saved_model.pb").is_file():
        return path
    if (path / "saved_model" / "saved_model.pb").is_file():
        return path / "saved_model"
    raise ExportError(f"no SavedModel at {path} (no saved_model.pb in it or in {path / 'saved_model'})")


def find_pipeline_config(saved_model: Path) -> Path | None:
    """TFOD2's exporter writes pipeline.config next to saved_model/."""
    for candidate in (saved_model / "pipeline.config", saved_model.parent / "pipeline.config"):
        if candidate.is_file():
            return candidate
    return None


def run_source(source, batch: np.ndarray) -> dict[str, np.ndarray]:
    """An adopted SavedModel's own signature on uint8 images [B, H, W, 3] (PNG-encoded if it takes strings)."""
    import tensorflow as tf

    if source.kind == "encoded":
        return _numpy(source(tf.constant([tf.io.encode_png(image).numpy() for image in batch])))
    return _numpy(source(tf.constant(batch)))


def source_tolerance(source, samples: list[np.ndarray], reference: list[dict[str, np.ndarray]],
                     nms: tuple[float | None, bool, float]) -> Tolerance:
    """The adopted SavedModel's own batch-vs-single spread (its signature, not detserve's wrapper around it). A
    source fixed at batch 1 runs batches one image at a time: nothing to measure, the floor applies."""
    if source.batch_mapped:
        return Tolerance.from_spread(0.0, 0.0, *nms)
    return measure_tolerance(lambda batch: run_source(source, batch), samples, reference, *nms)


def saved_model_builder(source_dir: Path, label_map_path: Path | None, pipeline_config: Path | None,
                        signature: str, echo: Echo) -> Callable[[Path], BuiltModel]:
    """Wrap an existing SavedModel (e.g. TFOD2's exporter output) in detserve's signatures."""

    def build(staged: Path) -> BuiltModel:
        import tensorflow as tf

        from detserve.export.signatures import (
            SourceSignature,
            build_module,
            resize_input_size,
            saved_model_detect_fns,
        )

        saved_model = find_saved_model(source_dir)
        config = pipeline_config or find_pipeline_config(saved_model)
        notes: list[str] = []
        config_label_map, eval_pattern, num_classes, input_size = None, None, None, None
        if config is not None:
            config_label_map, eval_pattern = _pipeline_paths(config)
            num_classes = _pipeline_num_classes(config)
            input_size = pipeline_input_size(config)

        if label_map_path is not None:
            label_map, label_map_text = load_label_map(label_map_path)
            _check_label_map(label_map, num_classes, str(label_map_path))
        elif config_label_map and Path(config_label_map).is_file():
            label_map, label_map_text = load_label_map(config_label_map)
            _check_label_map(label_map, num_classes, config_label_map)
        elif num_classes:
            from detserve.training.data.label_map import write_label_map

            label_map = {i: f"class_{i}" for i in range(1, num_classes + 1)}
            scratch = staged.parent / f"{staged.name}.label_map"
            write_label_map(list(label_map.values()), scratch)
            label_map_text = scratch.read_text()
            scratch.unlink()
            notes.append(f"no label map given or found: classes named class_1..class_{num_classes}; "
                         "pass --label-map for real names")
        else:
            raise ExportError(f"no label map for {saved_model}: pass --label-map (and no pipeline.config found "
                              "beside it to count the classes)")

        echo(f"loading {saved_model}")
        loaded = tf.saved_model.load(str(saved_model))
        try:
            source = SourceSignature(loaded, signature)
        except ValueError as error:
            raise ExportError(f"{saved_model}: {error}") from error
        if input_size is None:
            input_size = resize_input_size(source.function)
            if input_size is None:
                notes.append("input size unknown (no pipeline.config and no constant resize in the graph): "
                             "model_info reports -1")
        if source.batch_mapped:
            notes.append(f"the source signature {signature!r} takes a fixed batch of {source.fixed_batch} "
                         f"({source.input_key} {source.spec.dtype.name} {source.spec.shape}): "
                         "batches are run one image at a time (tf.map_fn)")
        detect_images, detect_encoded = saved_model_detect_fns(source)
        module, signatures = build_module(detect_images, detect_encoded, label_map, input_size, {"source": loaded})

        samples, described = sample_images(eval_pattern)
        samples = with_resized_copies(samples, input_size)
        echo(f"reference detections of {saved_model} (signature {signature!r}) on {described} and their resized copies")
        reference = [run_source(source, image[np.newaxis]) for image in samples]
        tolerance = source_tolerance(source, samples, reference, pipeline_nms(config))
        echo("saving the SavedModel")
        tf.saved_model.save(module, str(staged), signatures=signatures)
        return BuiltModel(source=f"SavedModel {saved_model} (signature {signature!r})", label_map=label_map,
                          label_map_text=label_map_text, input_size=input_size, samples=samples,
                          reference=reference, tolerance=tolerance, batch_mapped=source.batch_mapped, notes=notes)

    return build


# ------------------------------------------------------------------------------------------------
# Verification in a fresh process.


def verify_in_subprocess(version_path: Path, built: BuiltModel, measure_latency: bool = True) -> dict:
    """Run detserve.export.verify on ``version_path`` in a new Python process with plain TensorFlow."""
    from detserve.export.verify import write_request

    with tempfile.TemporaryDirectory(prefix="detserve-verify-") as scratch:
        scratch = Path(scratch)
        write_request(scratch / "request.npz", built.samples, built.reference)
        params = {"label_map": {str(k): v for k, v in built.label_map.items()},
                  "input_size": list(built.input_size) if built.input_size else None,
                  "measure_latency": measure_latency, "tolerance": built.tolerance.to_json()}
        (scratch / "params.json").write_text(json.dumps(params))
        env = dict(os.environ)
        env.pop("TF_USE_LEGACY_KERAS", None)  # set by tfod_compat for TFOD2; a server has no such thing
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        command = [sys.executable, "-m", "detserve.export.verify", str(version_path), str(scratch / "request.npz"),
                   str(scratch / "params.json"), str(scratch / "result.json")]
        try:
            process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise ExportError(f"verification of {version_path} timed out after {VERIFY_TIMEOUT_S} s") from error
        result_file = scratch / "result.json"
        if not result_file.is_file():
            tail = "\n".join(process.stderr.strip().splitlines()[-5:])
            raise ExportError(f"verification process failed (exit {process.returncode}): {tail}")
        return json.loads(result_file.read_text())


def _failed_checks(verification: Mapping) -> str:
    failed = [c for c in verification.get("checks", []) if not c["ok"]]
    return "; ".join(f"{c['name']}: {c['detail']}" for c in failed[:3]) or "unknown failure"


def _check_method_names(version_path: Path) -> dict[str, dict]:
    signatures = describe_signatures(version_path)
    missing = [name for name in SIGNATURES if name not in signatures]
    if missing:
        raise ExportError(f"exported SavedModel lacks signatures {missing}")
    wrong = {name: s["method"] for name, s in signatures.items() if s["method"] != PREDICT_METHOD}
    if wrong:
        raise ExportError(f"signatures with a method other than {PREDICT_METHOD}: {wrong}")
    return signatures


# ------------------------------------------------------------------------------------------------
# The export.


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _export(build: Callable[[Path], BuiltModel], repository: Path | str, name: str, version: int | None,
            keep: int | None, serving_configs: Sequence[Path] | None, batching_configs: Sequence[Path] | None,
            echo: Echo | None, measure_latency: bool = True) -> ExportResult:
    echo = echo or (lambda message: None)
    if not _NAME.fullmatch(name) or name.isdigit():
        raise ExportError(f"model name {name!r} must be a plain directory name (letters, digits, _ . -; not a number)")
    model_dir = Path(repository) / name
    try:
        if version is not None:
            repo.check_version_free(model_dir, version)
        references = None
        if keep is not None:
            if keep < 1:
                raise repo.RepositoryError(f"--keep must be at least 1, got {keep}")
            references = repo.serving_references(
                default_serving_configs() if serving_configs is None else serving_configs, name)
        sizes = warmup_batch_sizes(default_batching_configs() if batching_configs is None else batching_configs)
    except (repo.RepositoryError, ValueError) as error:
        raise ExportError(str(error)) from error

    for stale in repo.remove_stale_temp_dirs(model_dir):
        echo(f"removed {stale}, left by an export that was killed")
    with repo.staging_dir(model_dir) as staged:
        built = build(staged)
        label_map = label_map_file(staged)
        label_map.parent.mkdir(exist_ok=True)
        label_map.write_text(built.label_map_text)
        warmup = write_warmup_file(staged, name, sizes)
        signatures = _check_method_names(staged)
        echo("verifying in a fresh process (plain TensorFlow)")
        verification = verify_in_subprocess(staged, built, measure_latency)
        if not verification.get("ok"):
            raise ExportError(f"verification failed, nothing published: {_failed_checks(verification)}")
        try:
            version, path = repo.publish(staged, model_dir, version)
        except repo.RepositoryError as error:
            raise ExportError(str(error)) from error

    notes = list(built.notes) + list(warmup.notes)
    warmup.path = path / warmup.path.relative_to(staged)
    result = ExportResult(version=version, path=path, size_bytes=repo.directory_size(path), source=built.source,
                          signatures=signatures, input_size=built.input_size, batch_mapped=built.batch_mapped,
                          warmup=warmup, verification=verification, notes=notes)
    if keep is not None:
        pruned = repo.prune(model_dir, keep, references)
        result.pruned, result.protected = pruned.removed, pruned.protected
        if references.latest_num_versions and keep < references.latest_num_versions:
            result.notes.append(f"--keep {keep} is below the serving config's latest {{ num_versions: "
                                f"{references.latest_num_versions} }}: the server has no previous version to fall back to")
    return result


def export_checkpoint(
    pipeline_config: Path | str,
    checkpoint: Path | str | None = None,
    repository: Path | str = "models",
    name: str = "detector",
    *,
    version: int | None = None,
    keep: int | None = None,
    label_map: Path | str | None = None,
    serving_configs: Sequence[Path] | None = None,
    batching_configs: Sequence[Path] | None = None,
    echo: Echo | None = None,
    measure_latency: bool = True,
) -> ExportResult:
    """Export a TFOD2 checkpoint (prefix, or a directory: its latest; default: pipeline.config's directory).

    ``serving_configs``/``batching_configs`` default to serving/models*.config and the two batching
    configs. Raises ExportError (nothing published) on any failure, including verification.
    """
    pipeline_config = Path(pipeline_config)
    if not pipeline_config.is_file():
        raise ExportError(f"pipeline config not found: {pipeline_config}")
    checkpoint = checkpoint if checkpoint is not None else pipeline_config.parent
    builder = checkpoint_builder(pipeline_config, checkpoint, Path(label_map) if label_map else None, echo or (lambda m: None))
    return _export(builder, repository, name, version, keep, serving_configs, batching_configs, echo, measure_latency)


def adopt_saved_model(
    source: Path | str,
    repository: Path | str = "models",
    name: str = "detector",
    *,
    version: int | None = None,
    keep: int | None = None,
    label_map: Path | str | None = None,
    pipeline_config: Path | str | None = None,
    signature: str = DEFAULT_SIGNATURE,
    serving_configs: Sequence[Path] | None = None,
    batching_configs: Sequence[Path] | None = None,
    echo: Echo | None = None,
    measure_latency: bool = True,
) -> ExportResult:
    """Bring a SavedModel made by TFOD2's exporter into the repository with detserve's signatures."""
    source = Path(source)
    if not source.exists():
        raise ExportError(f"SavedModel not found: {source}")
    find_saved_model(source)  # fail before anything else
    builder = saved_model_builder(source, Path(label_map) if label_map else None,
                                  Path(pipeline_config) if pipeline_config else None, signature, echo or (lambda m: None))
    return _export(builder, repository, name, version, keep, serving_configs, batching_configs, echo, measure_latency)


# ------------------------------------------------------------------------------------------------
# The summary.


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _shape(dims) -> str:
    return "?" if dims is None else "[" + ", ".join("-1" if d < 0 else str(d) for d in dims) + "]"


def format_summary(result: ExportResult) -> str:
    lines = [f"exported {result.path} (version {result.version})", f"  source      {result.source}"]
    saved_model_pb = result.path / "saved_model.pb"
    variables = repo.directory_size(result.path / "variables") if (result.path / "variables").exists() else 0
    lines.append(f"  size        {_megabytes(result.size_bytes)} (saved_model.pb {_megabytes(saved_model_pb.stat().st_size)}, "
                 f"variables {_megabytes(variables)}, warmup {_megabytes(result.warmup.size_bytes)})")
    size = f"{result.input_size[0]}x{result.input_size[1]}" if result.input_size else "unknown"
    lines.append(f"  input size  {size} (model_info signature; images of any size are resized in the graph)")
    lines.append(f"  signatures  (method {PREDICT_METHOD})")
    for name, signature in result.signatures.items():
        inputs = ", ".join(f"{k} {dtype} {_shape(dims)}" for k, (dtype, dims) in signature["inputs"].items())
        lines.append(f"    {name:<16} {inputs}")
        for key, (dtype, dims) in signature["outputs"].items():
            lines.append(f"    {'':<16}   -> {key} {dtype} {_shape(dims)}")
    batch = ("mapped per image: the source SavedModel is fixed at batch 1" if result.batch_mapped
             else "dynamic (server-side batching merges requests)")
    lines.append(f"  batch       {batch}")
    warmup = result.warmup
    lines.append(f"  warmup      {warmup.records} PredictionLog records ({', '.join(warmup.signatures)} at batch "
                 f"{', '.join(map(str, warmup.batch_sizes))}), {_megabytes(warmup.size_bytes)}")
    verification = result.verification
    checks = verification.get("checks", [])
    compared = sum(c.get("compared", 0) for c in checks)
    lines.append(f"  verified    OK: {len(checks)} checks in a fresh process with plain TensorFlow, {compared} "
                 f"detections matched (max |score diff| {verification.get('max_score_diff', 0):.1e}, "
                 f"max |box diff| {verification.get('max_box_diff', 0):.1e}, NMS flips {verification.get('nms_flips', 0)})")
    tolerance = verification.get("tolerance")
    if tolerance and tolerance.get("score_spread") is not None:
        lines.append(f"  tolerance   score {tolerance['score']:.1e}, box {tolerance['box']:.1e}: {MARGIN:g}x the source's own "
                     f"batch-vs-single spread on this machine (score {tolerance['score_spread']:.1e}, box "
                     f"{tolerance['box_spread']:.1e}), at least {MIN_TOLERANCE:.0e}; NMS IoU threshold "
                     f"{tolerance['nms_iou_threshold']:.3g}")
    latency = verification.get("latency_ms", {})
    if latency:
        image = verification.get("image_size", ["?", "?"])
        parts = []
        for signature in DETECTION_SIGNATURES:
            if signature in latency:
                by_batch = latency[signature]
                parts.append(f"{signature} " + ", ".join(
                    f"batch {b}: {ms:.0f} ms ({ms / int(b):.0f} ms/image)" for b, ms in by_batch.items()))
        lines.append(f"  latency     median of 3 on {image[0]}x{image[1]} images, this machine: " + "; ".join(parts))
    if result.pruned or result.protected:
        kept = ", ".join(f"{v} ({'; '.join(why)})" for v, why in sorted(result.protected.items()))
        lines.append(f"  pruned      versions {', '.join(map(str, result.pruned)) or 'none'}"
                     + (f"; kept for the serving config: {kept}" if kept else ""))
    for note in result.notes:
        lines.append(f"  note        {note}")
    return "\n".join(lines)

