"""Verify an exported version in a fresh process with plain TensorFlow (``object_detection`` never imported).

The exporter saves sample images and the source model's detections for them (one image at a time) to a
request file, then runs ``python -m detserve.export.verify REQUEST RESULT``. This process loads the
SavedModel the way a server would (tf.saved_model.load, signatures only) and checks:

- ``serving_default`` on each image alone matches the source's detections;
- ``serving_default`` on a batch of 8 rows of the equal-size samples (each image in several rows) gives every
  row its own image's detections (batch-vs-single parity: server-side batching must not change answers);
- ``serving_bytes`` on all images PNG-encoded in one batch (of mixed sizes) matches too;
- ``detection_class_names`` agrees with the label map, ``model_info`` with the input size;
- ``object_detection`` was not imported.

Then it times both signatures at batch 1 and 8 and writes a JSON result. "Matches" is
detserve.export.parity's rule: detection sets compared within a tolerance the exporter measured on the
source model (its own batch-vs-single spread on this hardware), NMS flips of near-threshold overlaps excused.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from detserve.client.contract import (
    BYTES_SIGNATURE,
    CLASS_NAMES_OUTPUT,
    DEFAULT_SIGNATURE,
    DETECTION_OUTPUTS,
    ENCODED_INPUT,
    IMAGES_INPUT,
    INFO_INPUT,
    INFO_OUTPUTS,
    INFO_SIGNATURE,
    NUMERIC_OUTPUTS,
    SIGNATURES,
)
from detserve.export.parity import (
    Tolerance,
    compare_detections,
    parity_rows,
)

LATENCY_BATCHES = (1, 8)
LATENCY_RUNS = 3


def _encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def signature_summary(loaded) -> dict:
    """{signature: {"inputs": {key: [dtype, shape]}, "outputs": {...}}} with -1 for unknown dimensions."""

    def shape(spec):
        return [-1 if d is None else int(d) for d in spec.shape.as_list()] if spec.shape.rank is not None else None

    summary = {}
    for name, function in loaded.signatures.items():
        _, inputs = function.structured_input_signature
        summary[name] = {
            "inputs": {key: [spec.dtype.name, shape(spec)] for key, spec in sorted(inputs.items())},
            "outputs": {key: [spec.dtype.name, shape(spec)] for key, spec in sorted(function.structured_outputs.items())},
        }
    return summary


def _numpy(outputs) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in outputs.items()}


def _check_class_names(outputs, label_map: Mapping[int, str]) -> str:
    names = outputs[CLASS_NAMES_OUTPUT]
    for row in range(names.shape[0]):
        count = int(round(float(outputs["num_detections"][row])))
        for slot in range(names.shape[1]):
            expected = label_map.get(int(round(float(outputs["detection_classes"][row, slot]))), "") if slot < count else ""
            if names[row, slot].decode() != expected:
                return (f"detection_class_names[{row}, {slot}] is {names[row, slot].decode()!r}, "
                        f"expected {expected!r}")
    return ""


def _time(function, runs: int = LATENCY_RUNS) -> float:
    function()  # first call: lazy initialisation, not measured
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000.0)


def _compare_row(reference: list[dict[str, np.ndarray]], index: int, batched: Mapping[str, np.ndarray], row: int,
                 tolerance: Tolerance) -> dict:
    """Batch row ``row`` (holding sample ``index``) against that sample alone; a row that answers as another
    sample alone does is reported as a reordered batch."""
    comparison = compare_detections(reference[index], batched, cand_index=row, tolerance=tolerance)
    if not comparison["ok"]:
        for other, expected in enumerate(reference):
            if other != index and compare_detections(expected, batched, cand_index=row, tolerance=tolerance)["ok"]:
                comparison["problem"] = (f"row {row} answers as image {other} alone does: images swapped or "
                                         f"reordered inside the batch ({comparison['problem']})")
                break
    return comparison


def verify(saved_model, images: list[np.ndarray], reference: list[dict[str, np.ndarray]],
           label_map: Mapping[int, str], input_size: tuple[int, int] | None, measure_latency: bool = True,
           plain_tensorflow: bool = True, tolerance: Tolerance | None = None) -> dict:
    """Run the checks in this process (``main`` calls it in a fresh one). Returns the JSON-able result.

    ``saved_model``: a SavedModel directory, or anything with a ``signatures`` mapping (in-process tests).
    ``tolerance``: what the exporter measured on the source (see detserve.export.parity); default
    DEFAULT_TOLERANCE. ``plain_tensorflow``: also check that nothing imported ``object_detection``.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model)) if isinstance(saved_model, (str, Path)) else saved_model
    tolerance = tolerance or Tolerance()
    checks: list[dict] = []

    def check(name: str, ok: bool, detail: str = "", **extra) -> None:
        checks.append({"name": name, "ok": bool(ok), "detail": detail, **extra})

    missing = [s for s in SIGNATURES if s not in loaded.signatures]
    check("signatures present", not missing, f"missing {missing}" if missing else ", ".join(SIGNATURES))
    result: dict = {"signatures": signature_summary(loaded), "checks": checks, "latency_ms": {},
                    "tolerance": tolerance.to_json()}
    too_loose = tolerance.problem()
    check("tolerance", not too_loose, too_loose or f"score {tolerance.score:.1e}, box {tolerance.box:.1e}")
    if missing or too_loose:
        result["ok"] = False
        return result
    default = loaded.signatures[DEFAULT_SIGNATURE]
    encoded_fn = loaded.signatures[BYTES_SIGNATURE]
    max_score, max_box, flips = 0.0, 0.0, 0

    def record(name: str, comparison: dict) -> None:
        nonlocal max_score, max_box, flips
        max_score = max(max_score, comparison["max_score_diff"])
        max_box = max(max_box, comparison["max_box_diff"])
        flips += comparison["nms_flips"]
        check(name, comparison["ok"], comparison["problem"], compared=comparison["compared"],
              max_score_diff=comparison["max_score_diff"], max_box_diff=comparison["max_box_diff"],
              nms_flips=comparison["nms_flips"])

    outputs_keys_ok = True
    for index, (image, expected) in enumerate(zip(images, reference, strict=True)):
        outputs = _numpy(default(**{IMAGES_INPUT: tf.constant(image[np.newaxis])}))
        outputs_keys_ok &= set(outputs) == set(DETECTION_OUTPUTS)
        record(f"{DEFAULT_SIGNATURE} image {index} ({image.shape[0]}x{image.shape[1]}) vs source",
               compare_detections(expected, outputs, tolerance=tolerance))
        problem = _check_class_names(outputs, label_map)
        if problem:
            check(f"class names image {index}", False, problem)
    check("detection outputs", outputs_keys_ok, ", ".join(DETECTION_OUTPUTS))

    # Batch parity: the equal-size samples, each in a row of one batch, against themselves alone.
    rows = parity_rows(images)
    batched = _numpy(default(**{IMAGES_INPUT: tf.constant(np.stack([images[i] for i in rows]))}))
    for row, index in enumerate(rows):
        comparison = _compare_row(reference, index, batched, row, tolerance)
        record(f"{DEFAULT_SIGNATURE} image {index} at row {row} of a batch of {len(rows)} vs source", comparison)

    encoded = [_encode_png(image) for image in images]
    decoded = _numpy(encoded_fn(**{ENCODED_INPUT: tf.constant(encoded)}))
    for index in range(len(reference)):
        comparison = _compare_row(reference, index, decoded, index, tolerance)
        record(f"{BYTES_SIGNATURE} image {index} (PNG, in a batch of {len(images)}) vs source", comparison)
    problem = _check_class_names(decoded, label_map)
    check(f"{BYTES_SIGNATURE} class names", not problem, problem)

    info_spec = loaded.signatures[INFO_SIGNATURE].structured_input_signature[1][INFO_INPUT]
    height, width = info_spec.shape[1], info_spec.shape[2]
    expected_size = tuple(input_size) if input_size else (None, None)
    check("model_info input shape", (height, width) == expected_size,
          f"[-1, {height}, {width}, 3] (expected {expected_size})")
    if height and width:
        info = _numpy(loaded.signatures[INFO_SIGNATURE](**{INFO_INPUT: tf.zeros([1, height, width, 3], tf.uint8)}))
        names = [n.decode() for n in info["class_names"][0]]
        ok = (int(info["input_height"][0]), int(info["input_width"][0])) == (height, width) and \
            dict(zip(info["class_ids"][0].tolist(), names, strict=True)) == dict(label_map) and set(info) == set(INFO_OUTPUTS)
        check("model_info values", ok, f"{int(info['input_height'][0])}x{int(info['input_width'][0])}, {names}")

    if plain_tensorflow:
        check("plain TensorFlow (object_detection not imported)", "object_detection" not in sys.modules)

    first = images[rows[0]]
    if measure_latency and all(c["ok"] for c in checks):  # no point timing a model that failed
        for name, function, key, make in (
            (DEFAULT_SIGNATURE, default, IMAGES_INPUT, lambda b: tf.constant(np.stack([first] * b))),
            (BYTES_SIGNATURE, encoded_fn, ENCODED_INPUT, lambda b: tf.constant([encoded[rows[0]]] * b)),
        ):
            result["latency_ms"][name] = {}
            for size in LATENCY_BATCHES:
                value = make(size)
                result["latency_ms"][name][str(size)] = _time(lambda f=function, k=key, v=value: f(**{k: v}))
    result["image_size"] = [int(first.shape[0]), int(first.shape[1])]
    result["max_score_diff"], result["max_box_diff"], result["nms_flips"] = max_score, max_box, flips
    result["ok"] = all(c["ok"] for c in checks)
    return result


REQUEST_IMAGES = "images"
REQUEST_REFERENCE = "reference"


def write_request(path: Path | str, images: list[np.ndarray], reference: list[Mapping[str, np.ndarray]]) -> None:
    arrays = {f"{REQUEST_IMAGES}_{i}": image for i, image in enumerate(images)}
    for i, outputs in enumerate(reference):
        for key in NUMERIC_OUTPUTS:
            arrays[f"{REQUEST_REFERENCE}_{i}_{key}"] = np.asarray(outputs[key])
    np.savez(path, **arrays)


def read_request(path: Path | str) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    with np.load(path) as data:
        count = sum(1 for key in data.files if key.startswith(f"{REQUEST_IMAGES}_"))
        images = [data[f"{REQUEST_IMAGES}_{i}"] for i in range(count)]
        reference = [{key: data[f"{REQUEST_REFERENCE}_{i}_{key}"] for key in NUMERIC_OUTPUTS} for i in range(count)]
    return images, reference


def main(argv: list[str] | None = None) -> int:
    """``python -m detserve.export.verify SAVED_MODEL REQUEST.npz PARAMS.json RESULT.json``"""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved_model, request, params_path, result_path = (argv if argv is not None else sys.argv[1:])
    params = json.loads(Path(params_path).read_text())
    images, reference = read_request(request)
    label_map = {int(k): v for k, v in params["label_map"].items()}
    try:
        tolerance = Tolerance.from_json(params["tolerance"]) if params.get("tolerance") else None
        result = verify(saved_model, images, reference, label_map,
                        tuple(params["input_size"]) if params.get("input_size") else None,
                        measure_latency=params.get("measure_latency", True), tolerance=tolerance)
    except Exception as error:  # reported to the exporter, which fails the export
        result = {"ok": False, "checks": [{"name": "load and run", "ok": False, "detail": f"{type(error).__name__}: {error}"}]}
    Path(result_path).write_text(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
