"""A predictor for the .tflite files ``detserve export --format tflite`` writes, so evaluation scores them too.

The .tflite is TFOD2's TFLite graph (object_detection/export_tflite_graph_lib_tf2.py): it takes one image
already resized to the model's input size and normalised, float32 ``[1, H, W, 3]``, and ends in TFLite's
``TFLite_Detection_PostProcess`` op. What the app must do before it (the resize and the normalisation) is
recorded in the sidecar ``<stem>.json`` written beside the .tflite (:class:`TFLiteMetadata`); this module
does exactly that, with TFOD2's resize (``detserve.client.images.resize_bilinear``, the graph's arithmetic),
and returns the detections in the layout every predictor returns (see predictors.py).

The interpreter is ``tf.lite.Interpreter`` (it warns that it is deprecated in favour of ai-edge-litert, which
is not in the locked requirements; the warning is silenced here and documented in docs/export.md).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from detserve.client.contract import LABEL_ID_OFFSET

from .predictors import Predictor, _check_image

METADATA_SUFFIX = ".json"
FORMAT = "detserve-tflite/1"
# The signature outputs of TFOD2's SSD TFLite graph: its inference_fn returns the post-processing op's
# (boxes, classes, scores, num_detections) reversed, and the converter names a tuple's items output_<i>.
OUTPUTS = {"num_detections": "output_0", "detection_scores": "output_1", "detection_classes": "output_2",
           "detection_boxes": "output_3"}
DEFAULT_THREADS = 2


class TFLiteModelError(ValueError):
    """A .tflite or its sidecar that this predictor cannot run (names the file and what is wrong)."""


@dataclass(frozen=True)
class TFLiteMetadata:
    """What running a detserve .tflite needs besides the file (written as ``<stem>.json``)."""

    input_size: tuple[int, int]  # (height, width) the image is resized to
    mean: float  # the model's input is (pixels - mean) / std, pixels in 0..255
    std: float
    resize: str  # detserve.client.images.resize_bilinear's method (TFOD2's fixed_shape_resizer: bilinear_legacy)
    quantize: str  # float16 or int8
    label_map: str  # the label map's file name, beside the .tflite
    max_detections: int
    regular_nms: bool
    source: str
    calibration: str | None = None  # int8: where the representative images came from
    format: str = FORMAT

    def write(self, path: Path) -> None:
        document = asdict(self)
        document["input_size"] = list(self.input_size)
        document["outputs"] = OUTPUTS
        document["label_id_offset"] = LABEL_ID_OFFSET
        path.write_text(json.dumps(document, indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> TFLiteMetadata:
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise TFLiteModelError(f"{path} not found: a .tflite needs the sidecar `detserve export --format tflite` "
                                   "writes beside it (input size and normalisation)") from None
        except json.JSONDecodeError as error:
            raise TFLiteModelError(f"{path} is not JSON: {error}") from None
        if document.get("format") != FORMAT:
            raise TFLiteModelError(f"{path}: format is {document.get('format')!r}, expected {FORMAT!r}")
        fields = set(cls.__dataclass_fields__)
        missing = sorted(name for name in fields - {"calibration"} if name not in document)
        if missing:
            raise TFLiteModelError(f"{path} lacks {missing}")
        values = {name: document[name] for name in fields if name in document}
        values["input_size"] = tuple(int(side) for side in document["input_size"])
        return cls(**values)


def metadata_path(tflite: Path | str) -> Path:
    """The sidecar of ``tflite``: ``<stem>.json`` beside it."""
    return Path(tflite).with_suffix(METADATA_SUFFIX)


def prepare_input(image: np.ndarray, metadata: TFLiteMetadata) -> np.ndarray:
    """An HxWx3 uint8 image -> the .tflite's float32 input [1, H', W', 3]: resized as the SavedModel's graph
    resizes it (TFOD2's fixed_shape_resizer), then normalised. Also the int8 export's calibration input."""
    from detserve.client.images import resize_bilinear

    resized = resize_bilinear(image, metadata.input_size, metadata.resize, dtype=np.float32)
    return ((resized - np.float32(metadata.mean)) / np.float32(metadata.std))[np.newaxis].astype(np.float32)


def load_interpreter(model: Path | str | bytes, num_threads: int = DEFAULT_THREADS):
    """A ``tf.lite.Interpreter`` (XNNPACK, ``num_threads``) for a .tflite path or its bytes, tensors allocated."""
    import tensorflow as tf

    with warnings.catch_warnings():
        # "tf.lite.Interpreter is deprecated ... use ai_edge_litert": not in the locked requirements (docs/export.md).
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        if isinstance(model, bytes):
            interpreter = tf.lite.Interpreter(model_content=model, num_threads=num_threads)
        else:
            interpreter = tf.lite.Interpreter(model_path=str(model), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def detection_runner(interpreter, what: str):
    """``run(input [1,H,W,3] float32) -> {contract key: array}`` on ``interpreter``'s serving_default signature.

    Checks the signature is TFOD2's SSD TFLite graph's (one float32 image input, outputs named as OUTPUTS)."""
    signatures = interpreter.get_signature_list()
    if "serving_default" not in signatures:
        raise TFLiteModelError(f"{what} has no serving_default signature; it has {sorted(signatures)}")
    signature = signatures["serving_default"]
    if len(signature["inputs"]) != 1 or sorted(signature["outputs"]) != sorted(OUTPUTS.values()):
        raise TFLiteModelError(f"{what}: serving_default takes {signature['inputs']} and returns "
                               f"{signature['outputs']}; expected one image and {sorted(OUTPUTS.values())} "
                               "(TFOD2's SSD TFLite graph)")
    runner = interpreter.get_signature_runner("serving_default")
    (input_name,) = signature["inputs"]

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = runner(**{input_name: batch})
        result = {key: np.asarray(outputs[name]) for key, name in OUTPUTS.items()}
        boxes = result["detection_boxes"]
        if boxes.ndim != 3 or boxes.shape[-1] != 4 or result["num_detections"].shape != (1,):
            raise TFLiteModelError(f"{what}: {OUTPUTS['detection_boxes']} has shape {boxes.shape} and "
                                   f"{OUTPUTS['num_detections']} {result['num_detections'].shape}; expected "
                                   "[1, N, 4] boxes and [1] count")
        # TFLite_Detection_PostProcess numbers classes from 0; the label map (and every other predictor) from 1.
        result["detection_classes"] = result["detection_classes"] + LABEL_ID_OFFSET
        # It does not clip boxes to the image, as TFOD2's postprocess (the SavedModel's) does.
        result["detection_boxes"] = np.clip(boxes, 0.0, 1.0)
        return result

    return run


def tflite_predictor(path: Path | str, num_threads: int = DEFAULT_THREADS) -> Predictor:
    """A detserve .tflite (with its ``<stem>.json`` sidecar) as a one-image predictor for ``evaluate``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite model not found: {path}")
    metadata = TFLiteMetadata.read(metadata_path(path))
    run = detection_runner(load_interpreter(path, num_threads), str(path))

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        return run(prepare_input(_check_image(images)[0], metadata))

    return predict
