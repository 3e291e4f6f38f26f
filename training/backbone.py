"""Turn Keras MobileNetV2 ImageNet weights (``.h5``) into a TFOD2 "classification" checkpoint.

TFOD2's SSD MobileNetV2 FPN feature extractor builds a Keras MobileNetV2 whose layer names differ
from the ones in the released ``.h5`` files (written by Keras 2.1.6), so ``load_weights(by_name=True)``
loads almost nothing. The weighted layers correspond one to one, in order, with identical tensor
order inside each layer (measured; see ../shared/docs/mobilenet-v2-weights-into-tfod2.md), so we
copy them in order with a shape check on every tensor. The only deliberate difference: TFOD2 applies
the width multiplier to the last 1x1 conv (``Conv_1``) where Keras keeps 1280 filters for alpha < 1,
so its output channels are truncated to what TFOD2 built.

The result is saved as ``tf.train.Checkpoint(feature_extractor=backbone)``, the object layout that
``model_lib_v2`` restores for ``fine_tune_checkpoint_type: "classification"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import tfod_compat  # noqa: F401  (before object_detection)

# Layers whose output channels TFOD2 scales with the depth multiplier but Keras does not.
_TRUNCATED_LAYERS = ("Conv_1", "Conv_1_bn")


class BackboneWeightsError(ValueError):
    """The .h5 file does not fit the configured backbone (wrong alpha, wrong file)."""


@dataclass
class BackboneImport:
    checkpoint_prefix: str
    layers: int
    tensors: int
    truncated: list[str]


def alpha_from_filename(path: Path | str) -> float | None:
    """Keras names the files ``..._tf_kernels_<alpha>_<rows>_no_top.h5``."""
    match = re.search(r"_(\d+(?:\.\d+)?)_(\d+)(?:_no_top)?\.h5$", Path(path).name)
    return float(match.group(1)) if match else None


def read_h5_weights(path: Path | str) -> list[tuple[str, list[np.ndarray]]]:
    """Weighted layers of a Keras HDF5 weight file, in the file's ``layer_names`` order."""
    import h5py

    layers = []
    with h5py.File(path, "r") as h5:
        group = h5["model_weights"] if "model_weights" in h5 else h5
        for raw_name in group.attrs["layer_names"]:
            name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
            weight_names = [w.decode() if isinstance(w, bytes) else w for w in group[name].attrs["weight_names"]]
            if weight_names:
                layers.append((name, [np.asarray(group[name][w]) for w in weight_names]))
    return layers


def build_backbone(model_config):
    """Build the detection model and run one forward pass so its Keras backbone exists."""
    import tensorflow as tf
    from object_detection.builders import model_builder

    model = model_builder.build(model_config=model_config, is_training=True)
    size = model_config.ssd.image_resizer.fixed_shape_resizer
    images, shapes = model.preprocess(tf.zeros([1, size.height, size.width, 3], tf.float32))
    model.predict(images, shapes)
    return model._feature_extractor.classification_backbone


def import_backbone_weights(h5_path: Path | str, model_config, checkpoint_prefix: Path | str) -> BackboneImport:
    """Copy the ImageNet weights into TFOD2's backbone and save a classification checkpoint."""
    import tensorflow as tf

    h5_path = Path(h5_path)
    if not h5_path.is_file():
        raise FileNotFoundError(f"backbone weights {h5_path} not found")
    depth_multiplier = model_config.ssd.feature_extractor.depth_multiplier
    alpha = alpha_from_filename(h5_path)
    if alpha is not None and not np.isclose(alpha, depth_multiplier):
        raise BackboneWeightsError(
            f"{h5_path.name} holds MobileNetV2 weights for alpha {alpha}, but the pipeline's feature_extractor "
            f"depth_multiplier is {depth_multiplier}; they must be equal (use --depth-multiplier {alpha})"
        )

    backbone = build_backbone(model_config)
    targets = [layer for layer in backbone.layers if layer.weights]
    sources = read_h5_weights(h5_path)
    if len(sources) != len(targets):
        raise BackboneWeightsError(
            f"{h5_path.name} has {len(sources)} weighted layers, TFOD2's MobileNetV2 backbone has {len(targets)}: "
            "not a MobileNetV2 include_top=False weight file"
        )

    truncated, tensors = [], 0
    for (source_name, arrays), layer in zip(sources, targets, strict=True):
        variables = layer.weights
        if len(arrays) != len(variables):
            raise BackboneWeightsError(
                f"{h5_path.name}: layer {source_name} has {len(arrays)} tensors, backbone layer {layer.name} has {len(variables)}"
            )
        for array, variable in zip(arrays, variables, strict=True):
            target_shape = tuple(variable.shape)
            if array.shape != target_shape:
                if layer.name in _TRUNCATED_LAYERS and array.shape[:-1] == target_shape[:-1] and array.shape[-1] > target_shape[-1]:
                    array = array[..., : target_shape[-1]]
                    truncated.append(variable.name)
                else:
                    raise BackboneWeightsError(
                        f"{h5_path.name}: tensor {source_name} shape {array.shape} does not fit backbone variable "
                        f"{variable.name} {target_shape}; is depth_multiplier ({depth_multiplier}) the file's alpha, "
                        f"and min_depth <= 8 (it is {model_config.ssd.feature_extractor.min_depth})?"
                    )
            variable.assign(array)
            tensors += 1

    # save() (not write()) so the checkpoint carries save_counter, which train_loop's
    # assert_existing_objects_matched() expects to find.
    prefix = tf.train.Checkpoint(feature_extractor=backbone).save(str(checkpoint_prefix))
    return BackboneImport(checkpoint_prefix=prefix, layers=len(targets), tensors=tensors, truncated=truncated)
