"""Verify an exported version in a fresh process with plain TensorFlow (``object_detection`` never imported).

The exporter saves sample images and the source model's detections for them (one image at a time) to a
request file, then runs ``python -m detserve.export.verify REQUEST RESULT``. This process loads the
SavedModel the way a server would (tf.saved_model.load, signatures only) and checks:

- ``serving_default`` on each image alone matches the source's detections;
- ``serving_default`` on a batch of 8 (the first image among others of its size) gives the first image's
  detections again (batch-vs-single parity: server-side batching must not change answers);
- ``serving_bytes`` on all images PNG-encoded in one batch (of mixed sizes) matches too;
- ``detection_class_names`` agrees with the label map, ``model_info`` with the input size;
- ``object_detection`` was not imported.

Then it times both signatures at batch 1 and 8 and writes a JSON result. Detections are compared as sets
(same class, score and box within tolerance) above a score floor, so near-ties that non-max suppression
orders differently do not count as differences.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from detserve.export.signatures import (
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

SCORE_TOLERANCE = 2e-3
BOX_TOLERANCE = 2e-3
SCORE_FLOOR = 0.05
MIN_COMPARED = 10  # lower the floor so that at least this many detections per image are compared
PARITY_BATCH = 8
LATENCY_BATCHES = (1, 8)
LATENCY_RUNS = 3


def _valid(outputs: Mapping[str, np.ndarray], index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    count = int(round(float(np.asarray(outputs["num_detections"])[index])))
    boxes = np.asarray(outputs["detection_boxes"])[index][:count]
    scores = np.asarray(outputs["detection_scores"])[index][:count]
    classes = np.rint(np.asarray(outputs["detection_classes"])[index][:count]).astype(np.int64)
    return boxes, scores, classes


def compare_detections(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                       ref_index: int = 0, cand_index: int = 0, score_tolerance: float = SCORE_TOLERANCE,
                       box_tolerance: float = BOX_TOLERANCE, floor: float = SCORE_FLOOR) -> dict:
    """Compare one image's detections (batch rows ``ref_index``/``cand_index``).

    First slot by slot: same num_detections, classes, and scores/boxes within tolerance (this also checks
    models whose scores are all tied). Failing that, as sets: every reference detection scoring at least
    ``floor`` (lowered to the MIN_COMPARED-th best score if fewer pass) needs a candidate with the same
    class, |score difference| <= score_tolerance and every box coordinate within box_tolerance, and vice
    versa; the sorted scores must agree too. Detections within tolerance of the floor, or of the lowest
    score of a full output (where top-k may cut either way), may be missing on the other side.
    Returns {"ok", "compared", "max_score_diff", "max_box_diff", "problem"}.
    """
    ref = _valid(reference, ref_index)
    cand = _valid(candidate, cand_index)
    result = {"ok": True, "compared": 0, "max_score_diff": 0.0, "max_box_diff": 0.0, "problem": ""}
    if len(ref[1]) == len(cand[1]) and np.array_equal(ref[2], cand[2]):
        score_diff = float(np.abs(ref[1] - cand[1]).max(initial=0.0))
        box_diff = float(np.abs(ref[0] - cand[0]).max(initial=0.0))
        if score_diff <= score_tolerance and box_diff <= box_tolerance:
            result.update(compared=len(ref[1]), max_score_diff=score_diff, max_box_diff=box_diff)
            return result

    ranked = np.sort(ref[1])[::-1]
    if len(ranked) >= MIN_COMPARED:
        floor = min(floor, float(ranked[MIN_COMPARED - 1]))
    elif len(ranked):
        floor = min(floor, float(ranked[-1]))
    slots = np.asarray(reference["detection_scores"]).shape[-1]

    def cut(scores) -> float:
        """Scores at or below this may have been cut by top-k on that side."""
        return float(scores.min()) + score_tolerance if len(scores) == slots else -np.inf

    def match(source, target, label, lowest):
        boxes, scores, classes = source
        t_boxes, t_scores, t_classes = target
        used = np.zeros(len(t_scores), bool)
        for i in np.argsort(-scores):
            if scores[i] < lowest:
                break
            if scores[i] <= cut(t_scores):
                continue
            close = ((t_classes == classes[i]) & ~used & (np.abs(t_scores - scores[i]) <= score_tolerance)
                     & (np.abs(t_boxes - boxes[i]).max(axis=-1, initial=0.0) <= box_tolerance))
            if not close.any():
                result["ok"] = False
                result["problem"] = (f"{label} detection class {classes[i]} score {scores[i]:.4f} "
                                     f"box {np.round(boxes[i], 4).tolist()} has no counterpart within tolerance")
                return
            candidates = np.flatnonzero(close)
            j = candidates[np.argmin(np.abs(t_scores[candidates] - scores[i]))]
            used[j] = True
            result["compared"] += 1
            result["max_score_diff"] = max(result["max_score_diff"], float(abs(t_scores[j] - scores[i])))
            result["max_box_diff"] = max(result["max_box_diff"], float(np.abs(t_boxes[j] - boxes[i]).max()))

    match(ref, cand, "reference", floor)
    if result["ok"]:
        compared = result["compared"]
        match(cand, ref, "exported", floor + score_tolerance)
        result["compared"] = compared
    if result["ok"]:
        count = int((ref[1] >= floor + score_tolerance).sum())
        top_ref, top_cand = ranked[:count], np.sort(cand[1])[::-1][:count]
        if len(top_cand) < count or np.abs(top_ref - top_cand).max(initial=0.0) > score_tolerance:
            result["ok"] = False
            result["problem"] = f"the {count} best scores differ: {np.round(top_ref[:5], 4)} vs {np.round(top_cand[:5], 4)}"
    return result


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


def verify(saved_model: Path | str, images: list[np.ndarray], reference: list[dict[str, np.ndarray]],
           label_map: Mapping[int, str], input_size: tuple[int, int] | None, measure_latency: bool = True,
           plain_tensorflow: bool = True) -> dict:
    """Run the checks in this process (``main`` calls it in a fresh one). Returns the JSON-able result.

    ``plain_tensorflow``: also check that nothing imported ``object_detection`` (true in the fresh process).
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model))
    checks: list[dict] = []

    def check(name: str, ok: bool, detail: str = "", **extra) -> None:
        checks.append({"name": name, "ok": bool(ok), "detail": detail, **extra})

    missing = [s for s in SIGNATURES if s not in loaded.signatures]
    check("signatures present", not missing, f"missing {missing}" if missing else ", ".join(SIGNATURES))
    result: dict = {"signatures": signature_summary(loaded), "checks": checks, "latency_ms": {}}
    if missing:
        result["ok"] = False
        return result
    default = loaded.signatures[DEFAULT_SIGNATURE]
    encoded_fn = loaded.signatures[BYTES_SIGNATURE]
    max_score, max_box = 0.0, 0.0

    def record(name: str, comparison: dict) -> None:
        nonlocal max_score, max_box
        max_score = max(max_score, comparison["max_score_diff"])
        max_box = max(max_box, comparison["max_box_diff"])
        check(name, comparison["ok"], comparison["problem"], compared=comparison["compared"],
              max_score_diff=comparison["max_score_diff"], max_box_diff=comparison["max_box_diff"])

    outputs_keys_ok = True
    for index, (image, expected) in enumerate(zip(images, reference, strict=True)):
        outputs = _numpy(default(**{IMAGES_INPUT: tf.constant(image[np.newaxis])}))
        outputs_keys_ok &= set(outputs) == set(DETECTION_OUTPUTS)
        record(f"{DEFAULT_SIGNATURE} image {index} ({image.shape[0]}x{image.shape[1]}) vs source",
               compare_detections(expected, outputs))
        problem = _check_class_names(outputs, label_map)
        if problem:
            check(f"class names image {index}", False, problem)
    check("detection outputs", outputs_keys_ok, ", ".join(DETECTION_OUTPUTS))

    # Batch parity: the first image inside a batch of PARITY_BATCH images of its size.
    first = images[0]
    same_size = [im for im in images[1:] if im.shape == first.shape] or [first[::-1].copy()]
    batch = np.stack([first] + [same_size[i % len(same_size)] for i in range(PARITY_BATCH - 1)])
    batched = _numpy(default(**{IMAGES_INPUT: tf.constant(batch)}))
    record(f"{DEFAULT_SIGNATURE} image 0 in a batch of {PARITY_BATCH} vs alone", compare_detections(reference[0], batched))
    for row, image in enumerate(batch[1:], start=1):
        for index, candidate in enumerate(images):
            if candidate.shape == image.shape and np.array_equal(candidate, image):
                record(f"{DEFAULT_SIGNATURE} image {index} at row {row} of the batch vs source",
                       compare_detections(reference[index], batched, cand_index=row))
                break

    encoded = [_encode_png(image) for image in images]
    decoded = _numpy(encoded_fn(**{ENCODED_INPUT: tf.constant(encoded)}))
    for index, expected in enumerate(reference):
        record(f"{BYTES_SIGNATURE} image {index} (PNG, in a batch of {len(images)}) vs source",
               compare_detections(expected, decoded, cand_index=index))
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

    if measure_latency and all(c["ok"] for c in checks):  # no point timing a model that failed
        for name, function, key, make in (
            (DEFAULT_SIGNATURE, default, IMAGES_INPUT, lambda b: tf.constant(np.stack([first] * b))),
            (BYTES_SIGNATURE, encoded_fn, ENCODED_INPUT, lambda b: tf.constant([encoded[0]] * b)),
        ):
            result["latency_ms"][name] = {}
            for size in LATENCY_BATCHES:
                value = make(size)
                result["latency_ms"][name][str(size)] = _time(lambda f=function, k=key, v=value: f(**{k: v}))
    result["image_size"] = [int(first.shape[0]), int(first.shape[1])]
    result["max_score_diff"], result["max_box_diff"] = max_score, max_box
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
        result = verify(saved_model, images, reference, label_map,
                        tuple(params["input_size"]) if params.get("input_size") else None,
                        measure_latency=params.get("measure_latency", True))
    except Exception as error:  # reported to the exporter, which fails the export
        result = {"ok": False, "checks": [{"name": "load and run", "ok": False, "detail": f"{type(error).__name__}: {error}"}]}
    Path(result_path).write_text(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
