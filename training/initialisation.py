"""Where training starts from: a TFOD2 detection checkpoint, ImageNet backbone weights, or scratch."""

from __future__ import annotations

import os
from pathlib import Path

from detserve.training.checkpoints import resolve_checkpoint

# Keras Applications' release location and file naming (keras.applications.mobilenet_v2).
KERAS_WEIGHTS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


def keras_weights_filename(alpha: float, rows: int = 224) -> str:
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def resolve_backbone_weights(spec: str, alpha: float) -> Path:
    """A local ``.h5`` path, or ``imagenet``: Keras' own cached download (needs network the first time)."""
    if spec != "imagenet":
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights {path} not found (give a Keras MobileNetV2 no_top .h5 or 'imagenet')")
        return path
    import tensorflow as tf

    filename = keras_weights_filename(alpha)
    try:
        # Same cache as keras.applications (~/.keras/models, or $KERAS_HOME/models): offline once cached.
        return Path(tf.keras.utils.get_file(filename, KERAS_WEIGHTS_ORIGIN + filename, cache_subdir="models",
                                            cache_dir=os.environ.get("KERAS_HOME")))
    except Exception as error:  # get_file raises plain Exception subclasses for network failures
        raise FileNotFoundError(
            f"could not download {filename} ({error}); without network access pass the file with --backbone-weights PATH"
        ) from error


def detection_checkpoint(path: str) -> str:
    """A TFOD2 zoo/detection checkpoint prefix (``.../checkpoint/ckpt-0``) or a directory holding one
    (a zoo model's top folder keeps it in ``checkpoint/``)."""
    candidate = Path(path)
    if candidate.is_dir() and (candidate / "checkpoint").is_dir():
        candidate = candidate / "checkpoint"
    return resolve_checkpoint(candidate)
