"""The contract between export, serving, the client and evaluation, stated once (standard library only).

What a detserve model version is on disk and what it answers: the signature and tensor names, the output keys,
the label offset, the warmup file, the version directories and the server's default limits. Export writes to
it, serving and the client read it; every other module imports these names from here.

TF Serving's own rules are cited where detserve follows them (tensorflow/serving, 2.21).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# --- TF Serving and SavedModel names -------------------------------------------------------------------------
SERVE_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"
# GetModelMetadata's one metadata field, and the Any type it packs (model_servers/get_model_metadata_impl.cc).
SIGNATURE_DEF_FIELD = "signature_def"
SIGNATURE_DEF_MAP_TYPE_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"


def is_internal_signature(name: str) -> bool:
    """SavedModel's own entries (``__saved_model_init_op``), not signatures a client calls."""
    return name.startswith("__")


@dataclass(frozen=True)
class ModelSpec:
    """Which servable a request names (TF Serving's ModelSpec, in its REST URLs too): the newest AVAILABLE
    version of the model unless a version or a label is given."""

    name: str
    version: int | None = None
    label: str | None = None


# --- detserve's signatures ----------------------------------------------------------------------------------
DEFAULT_SIGNATURE = "serving_default"  # images uint8 [B, H, W, 3] -> detections
BYTES_SIGNATURE = "serving_bytes"  # encoded_images string [B] -> detections
INFO_SIGNATURE = "model_info"  # images uint8 [B, input_height, input_width, 3] -> input size, classes
IMAGES_INPUT = "images"
ENCODED_INPUT = "encoded_images"
INFO_INPUT = "images"
DETECTION_SIGNATURES = (DEFAULT_SIGNATURE, BYTES_SIGNATURE)
SIGNATURES = (DEFAULT_SIGNATURE, BYTES_SIGNATURE, INFO_SIGNATURE)

# --- outputs --------------------------------------------------------------------------------------------------
# The four numeric outputs, in TFOD2's names and layout: what any TFOD2 detector returns (a client accepts a
# signature with these as a detection signature, detserve's export or not).
DETECTION_BOXES = "detection_boxes"  # float32 [B, N, 4], normalised ymin, xmin, ymax, xmax
DETECTION_SCORES = "detection_scores"  # float32 [B, N], descending
DETECTION_CLASSES = "detection_classes"  # float32 [B, N], label-map ids (1-based)
NUM_DETECTIONS = "num_detections"  # float32 [B]
NUMERIC_OUTPUTS = (DETECTION_BOXES, DETECTION_SCORES, DETECTION_CLASSES, NUM_DETECTIONS)
# string [B, N]: the label-map name of each detection, "" beyond num_detections or for an unknown id.
CLASS_NAMES_OUTPUT = "detection_class_names"
DETECTION_OUTPUTS = (*NUMERIC_OUTPUTS, CLASS_NAMES_OUTPUT)  # what a detserve export returns
INFO_OUTPUTS = ("input_height", "input_width", "class_ids", "class_names")
# TFOD2's postprocess numbers classes from 0 (background removed); label maps start at 1.
LABEL_ID_OFFSET = 1

# --- files in a version directory -----------------------------------------------------------------------------
ASSETS_DIR = "assets"
LABEL_MAP_FILENAME = "label_map.pbtxt"
# servables/tensorflow/saved_model_warmup_util.h: kRequestsFileName in assets.extra, at most kMaxNumRecords.
ASSETS_EXTRA_DIR = "assets.extra"
WARMUP_FILENAME = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000


def label_map_file(version_dir: Path | str) -> Path:
    return Path(version_dir) / ASSETS_DIR / LABEL_MAP_FILENAME


def warmup_path(version_dir: Path | str) -> Path:
    return Path(version_dir) / ASSETS_EXTRA_DIR / WARMUP_FILENAME


# --- detserve's default limits (TF Serving itself sets none: SetMaxMessageSize(kint32max)) ---------------------
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096

# --- version directories --------------------------------------------------------------------------------------
# sources/storage_path/file_system_storage_path_source.cc: a child directory of base_path whose name parses as an
# int64 is a version, 0 included ("007" is 7). detserve ignores signed or space-padded names, which no exporter
# writes; detserve export writes versions from FIRST_VERSION on.
_VERSION = re.compile(r"[0-9]+")
MAX_VERSION = 2**63 - 1
FIRST_VERSION = 1


def parse_version(name: str) -> int | None:
    """The version a directory name stands for, or None if it is not a version directory name."""
    if not _VERSION.fullmatch(name):
        return None
    version = int(name)
    return version if version <= MAX_VERSION else None


def version_dirs(base_path: Path | str) -> dict[int, Path]:
    """``{version: directory}`` under ``base_path``; OSError from listing it propagates.

    Two spellings of one number ("7" and "007"): the greatest name wins, as TF Serving's index keeps the last
    in sorted order (the canonical spelling whenever it is present).
    """
    versions: dict[int, Path] = {}
    for entry in sorted(os.scandir(base_path), key=lambda e: e.name):
        version = parse_version(entry.name)
        if version is None:
            continue
        try:
            if entry.is_dir():
                versions[version] = Path(entry.path)
        except OSError:
            continue
    return versions
