"""The two sources a version is built from: a TFOD2 checkpoint, or a SavedModel TFOD2's exporter wrote.

A source is a builder ``build(staged) -> BuiltModel``: it saves a SavedModel with detserve's signatures into
the staging directory and returns what the rest of the export needs, including the source's own detections
of the sample images (computed without detserve's signatures, so verification compares the export with
something independent of it) and the tolerance measured on the source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# TFOD2 (the model builder) needs this before TensorFlow's first import.
import detserve.training.tfod_compat  # noqa: F401, I001

# isort: split
from . import signatures
from .combined_nms import combined_nms
from .errors import ExportError
from .images import encode_image, sample_images, with_resized_copies
from .labels import load_label_map, placeholder_label_map
from .parity import Tolerance, measure_tolerance
from .pipeline import NO_NMS, Nms, PipelineConfig, read_pipeline_config

Echo = Callable[[str], None]
Run = Callable[[np.ndarray], dict[str, np.ndarray]]  # uint8 [B, H, W, 3] -> numpy detections


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


def _references(run: Run, eval_pattern: str | None, input_size: tuple[int, int] | None, nms: Nms, what: str,
                echo: Echo, measure: bool = True) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]], Tolerance]:
    """The samples and their resized copies, the source's detections of each alone, and the tolerance: the
    source's own batch-vs-single spread (``measure=False`` for a source fixed at batch 1, which runs batches one
    image at a time: nothing to measure, the floor applies)."""
    samples, described = sample_images(eval_pattern)
    samples = with_resized_copies(samples, input_size)
    echo(f"reference detections of {what} on {described} and their resized copies")
    reference = [run(image[np.newaxis]) for image in samples]
    tolerance = measure_tolerance(run, samples, reference, *nms) if measure else Tolerance.from_spread(0.0, 0.0, *nms)
    return samples, reference, tolerance


# ------------------------------------------------------------------------------------------------
# A TFOD2 checkpoint.


def _step(prefix: str) -> str:
    """'step N' for a training checkpoint; 'no step' for one without (e.g. TFOD2's exported checkpoint)."""
    import tensorflow as tf

    from detserve.training.checkpoints import checkpoint_step

    try:
        return f"step {checkpoint_step(prefix)}"
    except tf.errors.NotFoundError:  # the checkpoint has no step variable
        return "no step"


def checkpoint_builder(pipeline_config: PipelineConfig | Path | str, checkpoint: Path | str,
                       label_map_path: Path | None, echo: Echo) -> Callable[[Path], BuiltModel]:
    """Rebuild the TFOD2 model of ``pipeline_config`` (parsed, or a path to parse) with the checkpoint's
    weights and save it with detserve's signatures."""
    pipeline = (pipeline_config if isinstance(pipeline_config, PipelineConfig)
                else read_pipeline_config(pipeline_config))

    def build(staged: Path) -> BuiltModel:
        import tensorflow as tf

        from detserve.training.evaluation.predictors import (
            checkpoint_mismatch,
            exporter_path_detect,
            restore_detection_model,
        )

        chosen = label_map_path or (Path(pipeline.label_map_path) if pipeline.label_map_path else None)
        if chosen is None:
            raise ExportError(f"{pipeline.path} names no label_map_path; pass --label-map")
        label_map, label_map_text = load_label_map(chosen, pipeline.num_classes)
        input_size = pipeline.input_size
        try:
            model, status, prefix = restore_detection_model(pipeline.path, checkpoint, config=pipeline.proto)
        except FileNotFoundError as error:
            raise ExportError(str(error)) from error
        checkpoint_name = f"{prefix} ({_step(prefix)})"
        echo(f"building the model of {pipeline.path} with {checkpoint_name}"
             + (f", input {input_size[0]}x{input_size[1]}" if input_size else ""))
        nms = combined_nms(pipeline.proto)
        echo(f"non-max suppression: {nms.reason}" if nms.function else
             f"non-max suppression: the model's own ({nms.reason})")
        try:
            detect_images, detect_encoded = signatures.checkpoint_detect_fns(model, input_size, nms.function)
            status.assert_existing_objects_matched()
            module, concrete = signatures.build_module(detect_images, detect_encoded, label_map, input_size, {})
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
            raise ExportError(str(checkpoint_mismatch(prefix, pipeline.path, error))) from error

        # The source is the restored model on TFOD2's exporter path, not detserve's signatures around it.
        source = exporter_path_detect(model)
        samples, reference, tolerance = _references(
            lambda batch: signatures.to_numpy(source(tf.constant(batch))), pipeline.eval_pattern, input_size,
            pipeline.nms, "the checkpoint model", echo)
        echo("saving the SavedModel")
        tf.saved_model.save(module, str(staged), signatures=concrete)
        return BuiltModel(source=f"checkpoint {checkpoint_name} + {pipeline.path}",
                          label_map=label_map, label_map_text=label_map_text, input_size=input_size,
                          samples=samples, reference=reference, tolerance=tolerance)

    return build


# ------------------------------------------------------------------------------------------------
# A SavedModel (TFOD2's exporter_main_v2).


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


def run_source(source: signatures.SourceSignature, batch: np.ndarray) -> dict[str, np.ndarray]:
    """An adopted SavedModel's own signature on uint8 images [B, H, W, 3] (PNG-encoded if it takes strings)."""
    import tensorflow as tf

    if source.kind == "encoded":
        return signatures.to_numpy(source(tf.constant([encode_image(image) for image in batch])))
    return signatures.to_numpy(source(tf.constant(batch)))


def _adopted_label_map(label_map_path: Path | None, pipeline: PipelineConfig | None, saved_model: Path,
                       staged: Path, notes: list[str]) -> tuple[dict[int, str], str]:
    """--label-map, else pipeline.config's label_map_path if that file is here, else class_1..class_N."""
    num_classes = pipeline.num_classes if pipeline else None
    config_label_map = pipeline.label_map_path if pipeline else None
    if label_map_path is not None:
        return load_label_map(label_map_path, num_classes)
    if config_label_map and Path(config_label_map).is_file():
        return load_label_map(config_label_map, num_classes)
    if num_classes:
        notes.append(f"no label map given or found: classes named class_1..class_{num_classes}; "
                     "pass --label-map for real names")
        return placeholder_label_map(num_classes, staged.parent / f"{staged.name}.label_map")
    raise ExportError(f"no label map for {saved_model}: pass --label-map (and no pipeline.config found "
                      "beside it to count the classes)")


def saved_model_builder(saved_model: Path, label_map_path: Path | None, pipeline: PipelineConfig | None,
                        signature: str, echo: Echo) -> Callable[[Path], BuiltModel]:
    """Wrap an existing SavedModel (``find_saved_model``'s directory, e.g. TFOD2's exporter output) in
    detserve's signatures; ``pipeline`` is its parsed pipeline.config, if there is one."""

    def build(staged: Path) -> BuiltModel:
        import tensorflow as tf

        notes: list[str] = []
        label_map, label_map_text = _adopted_label_map(label_map_path, pipeline, saved_model, staged, notes)
        echo(f"loading {saved_model}")
        loaded = tf.saved_model.load(str(saved_model))
        try:
            source = signatures.SourceSignature(loaded, signature)
        except ValueError as error:
            raise ExportError(f"{saved_model}: {error}") from error
        input_size = pipeline.input_size if pipeline else None
        if input_size is None:
            input_size = signatures.resize_input_size(source.function)
            if input_size is None:
                notes.append("input size unknown (no pipeline.config and no constant resize in the graph): "
                             "model_info reports -1")
        if source.batch_mapped:
            notes.append(f"the source signature {signature!r} takes a fixed batch of {source.fixed_batch} "
                         f"({source.input_key} {source.spec.dtype.name} {source.spec.shape}): "
                         "batches are run one image at a time (tf.map_fn)")
        detect_images, detect_encoded = signatures.saved_model_detect_fns(source)
        module, concrete = signatures.build_module(detect_images, detect_encoded, label_map, input_size,
                                                   {"source": loaded})

        samples, reference, tolerance = _references(
            lambda batch: run_source(source, batch), pipeline.eval_pattern if pipeline else None, input_size,
            pipeline.nms if pipeline else NO_NMS, f"{saved_model} (signature {signature!r})", echo,
            measure=not source.batch_mapped)
        echo("saving the SavedModel")
        tf.saved_model.save(module, str(staged), signatures=concrete)
        return BuiltModel(source=f"SavedModel {saved_model} (signature {signature!r})", label_map=label_map,
                          label_map_text=label_map_text, input_size=input_size, samples=samples,
                          reference=reference, tolerance=tolerance, batch_mapped=source.batch_mapped, notes=notes)

    return build
