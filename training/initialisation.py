"""Where training starts from: a TFOD2 detection checkpoint, ImageNet backbone weights, or scratch."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from .checkpoints import resolve_checkpoint

# Keras Applications' release location and file naming (keras.applications.mobilenet_v2).
KERAS_WEIGHTS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


def keras_weights_filename(alpha: float, rows: int = 224) -> str:
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


# sha256 of the released files that `imagenet` may use (Keras' own download passes none). Other widths need
# --backbone-weights-sha256, or the file itself as --backbone-weights PATH.
KERAS_WEIGHTS_SHA256 = {
    keras_weights_filename(0.35): "df1c3db1d0d9193719c4c70f707c56f7021f999f825bdc57454c275cf6def19f",
    keras_weights_filename(0.5): "279052de2cfa801003aa6cc25cc4d007d35dd0b76f06935268c79788b7642d05",
}


class WeightsHashError(ValueError):
    """A weights file is not the one expected: its sha256 differs, or no sha256 is known to check it against."""


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_sha256(sha256: str, option: str = "--backbone-weights-sha256") -> str:
    """A user-given sha256, lower-cased; ValueError naming ``option`` when it is not 64 hexadecimal digits."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"{option} {sha256!r} is not a sha256 (64 hexadecimal digits)")
    return sha256.lower()


def resolve_backbone_weights(spec: str, alpha: float, sha256: str | None = None) -> Path:
    """A local ``.h5`` path, or ``imagenet``: Keras' own cached download (needs network the first time),
    checked against the known sha256 of the release file (or ``sha256``) before it is used.

    A given ``sha256`` is checked for a local path too. A cached or downloaded file that does not match is
    moved aside (``<name>.rejected-<its sha256>``) so that the next run downloads it again.
    """
    expected = parse_sha256(sha256) if sha256 else None
    if spec != "imagenet":
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights {path} not found (give a Keras MobileNetV2 no_top .h5 or 'imagenet')")
        if expected:
            _check_sha256(path, expected, move_aside=False)
        return path
    filename = keras_weights_filename(alpha)
    expected = expected or KERAS_WEIGHTS_SHA256.get(filename)
    if expected is None:
        raise WeightsHashError(
            f"no known sha256 for {filename} (alpha {alpha}; known: alpha 0.35 and 0.5), so `imagenet` will not "
            f"download it unchecked: download {KERAS_WEIGHTS_ORIGIN}{filename} yourself, check it, and pass "
            "--backbone-weights PATH, or pass its sha256 with --backbone-weights-sha256"
        )
    path = _keras_download(filename)
    _check_sha256(path, expected, move_aside=True)
    return path


def _keras_download(filename: str) -> Path:
    """Keras' cached download: ~/.keras/models, or $KERAS_HOME/models; offline once cached."""
    import tensorflow as tf

    try:
        # No file_hash: on a mismatch get_file would silently download over the cached file; we check ourselves.
        return Path(tf.keras.utils.get_file(filename, KERAS_WEIGHTS_ORIGIN + filename, cache_subdir="models",
                                            cache_dir=os.environ.get("KERAS_HOME")))
    except Exception as error:  # get_file raises plain Exception subclasses for network failures
        raise FileNotFoundError(
            f"could not download {filename} ({error}); without network access pass the file with --backbone-weights PATH"
        ) from error


def _check_sha256(path: Path, expected: str, move_aside: bool) -> None:
    actual = file_sha256(path)
    if actual == expected:
        return
    where = f"{path}"
    if move_aside:
        rejected = path.with_name(f"{path.name}.rejected-{actual}")
        try:
            os.replace(path, rejected)
            where = f"{path} (moved aside to {rejected.name}; the next run downloads it again)"
        except OSError as error:
            where = f"{path} (could not move it aside: {error}; move or delete it yourself)"
    raise WeightsHashError(f"backbone weights {where}: sha256 {actual}, expected {expected}; not used")


def detection_checkpoint(path: str) -> str:
    """A TFOD2 zoo/detection checkpoint prefix (``.../checkpoint/ckpt-0``) or a directory holding one
    (a zoo model's top folder keeps it in ``checkpoint/``)."""
    candidate = Path(path)
    if candidate.is_dir() and (candidate / "checkpoint").is_dir():
        candidate = candidate / "checkpoint"
    return resolve_checkpoint(candidate)
