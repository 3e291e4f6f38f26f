"""Sharded TFRecords in TFOD2's tf.Example layout, and reading them back.

The feature keys are the ones TFOD2's ``TfExampleDecoder`` reads (see
object_detection/data_decoders/tf_example_decoder.py); boxes are normalised to [0, 1].
Shards are named ``<split>-00000-of-00004.tfrecord`` so a pipeline can glob ``<split>-*.tfrecord``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# TensorFlow is imported below; the process may import object_detection later, which needs
# TF_USE_LEGACY_KERAS set before the first TensorFlow import.
from .. import tfod_compat  # noqa: F401
from .records import ImageRecord


@dataclass
class EncodedImage:
    """An image ready for a tf.Example: 8-bit RGB, encoded as JPEG or PNG."""

    data: bytes
    format: str  # "jpeg" or "png"
    width: int
    height: int


@dataclass
class GroundTruthExample:
    """One decoded tf.Example: the image and its boxes (normalised ymin, xmin, ymax, xmax)."""

    filename: str
    image: np.ndarray  # uint8 [H, W, 3]
    boxes: np.ndarray  # float32 [N, 4]
    class_ids: np.ndarray  # int64 [N]
    class_names: list[str]
    difficult: np.ndarray  # bool [N]
    encoded: bytes = field(default=b"", repr=False)  # image/encoded as stored: what a client would send


def shard_paths(out_dir: Path | str, split: str, num_shards: int) -> list[Path]:
    return [Path(out_dir) / f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def split_pattern(data_dir: Path | str, split: str) -> str:
    """The glob that matches every shard of ``split`` (what pipeline.config's input_path uses)."""
    return str(Path(data_dir) / f"{split}-?????-of-?????.tfrecord")


def make_example(record: ImageRecord, image: EncodedImage, label_to_id: dict[str, int]):
    """Build a TFOD2 tf.Example from a validated record whose labels are all in ``label_to_id``."""
    import tensorflow as tf

    def _bytes(values: list[bytes]):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    def _floats(values: list[float]):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def _ints(values: list[int]):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    w, h = float(image.width), float(image.height)
    objects = record.objects
    filename = record.image_path.name.encode()
    feature = {
        "image/height": _ints([image.height]),
        "image/width": _ints([image.width]),
        "image/filename": _bytes([filename]),
        "image/source_id": _bytes([record.key.encode()]),
        "image/key/sha256": _bytes([hashlib.sha256(image.data).hexdigest().encode()]),
        "image/encoded": _bytes([image.data]),
        "image/format": _bytes([image.format.encode()]),
        "image/object/bbox/xmin": _floats([o.xmin / w for o in objects]),
        "image/object/bbox/xmax": _floats([o.xmax / w for o in objects]),
        "image/object/bbox/ymin": _floats([o.ymin / h for o in objects]),
        "image/object/bbox/ymax": _floats([o.ymax / h for o in objects]),
        "image/object/class/text": _bytes([o.label.encode() for o in objects]),
        "image/object/class/label": _ints([label_to_id[o.label] for o in objects]),
        "image/object/difficult": _ints([int(o.difficult) for o in objects]),
        "image/object/truncated": _ints([int(o.truncated) for o in objects]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_shards(examples: Iterable, out_dir: Path | str, split: str, num_shards: int) -> list[Path]:
    """Write serialisable tf.Examples round-robin into ``num_shards`` files; returns the paths."""
    import tensorflow as tf

    paths = shard_paths(out_dir, split, num_shards)
    writers = [tf.io.TFRecordWriter(str(p)) for p in paths]
    try:
        for index, example in enumerate(examples):
            writers[index % num_shards].write(example.SerializeToString())
    finally:
        for writer in writers:
            writer.close()
    return paths


def _decode(serialized: bytes) -> GroundTruthExample:
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    f = example.features.feature

    def floats(key: str) -> list[float]:
        return list(f[key].float_list.value)

    encoded = f["image/encoded"].bytes_list.value[0]
    image = Image.open(io.BytesIO(encoded)).convert("RGB")
    boxes = np.stack(
        [floats("image/object/bbox/ymin"), floats("image/object/bbox/xmin"),
         floats("image/object/bbox/ymax"), floats("image/object/bbox/xmax")],
        axis=-1,
    ).astype(np.float32).reshape(-1, 4)
    return GroundTruthExample(
        filename=f["image/filename"].bytes_list.value[0].decode(),
        image=np.asarray(image, dtype=np.uint8),
        boxes=boxes,
        class_ids=np.asarray(f["image/object/class/label"].int64_list.value, dtype=np.int64),
        class_names=[t.decode() for t in f["image/object/class/text"].bytes_list.value],
        difficult=np.asarray(f["image/object/difficult"].int64_list.value, dtype=bool).reshape(-1),
        encoded=encoded,
    )


def read_examples(pattern: str) -> Iterator[GroundTruthExample]:
    """Decode every tf.Example in the shards matching ``pattern``, in a stable order."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern}")
    for serialized in tf.data.TFRecordDataset(files).as_numpy_iterator():
        yield _decode(serialized)


def read_boxes(pattern: str) -> np.ndarray:
    """Every box (normalised ymin, xmin, ymax, xmax) in the shards matching ``pattern``, in a stable order. Reads
    only the box features: no image is decoded."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern}")
    boxes = []
    for serialized in tf.data.TFRecordDataset(files).as_numpy_iterator():
        f = tf.train.Example.FromString(serialized).features.feature
        boxes.append(np.stack([f[f"image/object/bbox/{key}"].float_list.value for key in ("ymin", "xmin", "ymax", "xmax")],
                              axis=-1).astype(np.float32).reshape(-1, 4))
    return np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
