"""Verify an exported version in a fresh process with plain TensorFlow (``object_detection`` never imported).

Both ends of that process are here. The exporter (``verify_in_subprocess``) saves sample images and the
source model's detections for them (one image at a time) to a request file, then runs
``python -m detserve.export.verify --exit-with-parent SAVED_MODEL REQUEST PARAMS RESULT`` (it dies with the
exporter; its files live in a hidden staging directory the next export sweeps). That process loads the
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

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# The contract's names, qualified: what is checked here is the contract itself.
from detserve.client import contract

from .errors import ExportError
from .images import encode_image
from .parity import Tolerance, compare_detections, parity_rows
from .repository import staging_dir
from .signatures import to_numpy

if TYPE_CHECKING:
    from .sources import BuiltModel

LATENCY_BATCHES = (1, 8)
LATENCY_RUNS = 3


def _check_class_names(outputs, label_map: Mapping[int, str]) -> str:
    names = outputs[contract.CLASS_NAMES_OUTPUT]
    for row in range(names.shape[0]):
        count = int(round(float(outputs[contract.NUM_DETECTIONS][row])))
        for slot in range(names.shape[1]):
            class_id = int(round(float(outputs[contract.DETECTION_CLASSES][row, slot])))
            expected = label_map.get(class_id, "") if slot < count else ""
            if names[row, slot].decode() != expected:
                return (f"{contract.CLASS_NAMES_OUTPUT}[{row}, {slot}] is {names[row, slot].decode()!r}, "
                        f"expected {expected!r}")
    return ""


def median_call_ms(function, runs: int = LATENCY_RUNS) -> float:
    """Median wall time of ``runs`` calls of ``function`` in ms, after one unmeasured call (lazy initialisation)."""
    function()
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

    missing = [s for s in contract.SIGNATURES if s not in loaded.signatures]
    check("signatures present", not missing, f"missing {missing}" if missing else ", ".join(contract.SIGNATURES))
    result: dict = {"checks": checks, "latency_ms": {}, "tolerance": tolerance.to_json()}
    too_loose = tolerance.problem()
    check("tolerance", not too_loose, too_loose or f"score {tolerance.score:.1e}, box {tolerance.box:.1e}")
    if missing or too_loose:
        result["ok"] = False
        return result
    default = loaded.signatures[contract.DEFAULT_SIGNATURE]
    encoded_fn = loaded.signatures[contract.BYTES_SIGNATURE]
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
        outputs = to_numpy(default(**{contract.IMAGES_INPUT: tf.constant(image[np.newaxis])}))
        outputs_keys_ok &= set(outputs) == set(contract.DETECTION_OUTPUTS)
        record(f"{contract.DEFAULT_SIGNATURE} image {index} ({image.shape[0]}x{image.shape[1]}) vs source",
               compare_detections(expected, outputs, tolerance=tolerance))
        problem = _check_class_names(outputs, label_map)
        if problem:
            check(f"class names image {index}", False, problem)
    check("detection outputs", outputs_keys_ok, ", ".join(contract.DETECTION_OUTPUTS))

    # Batch parity: the equal-size samples, each in a row of one batch, against themselves alone.
    rows = parity_rows(images)
    batched = to_numpy(default(**{contract.IMAGES_INPUT: tf.constant(np.stack([images[i] for i in rows]))}))
    for row, index in enumerate(rows):
        comparison = _compare_row(reference, index, batched, row, tolerance)
        record(f"{contract.DEFAULT_SIGNATURE} image {index} at row {row} of a batch of {len(rows)} vs source", comparison)

    encoded = [encode_image(image) for image in images]
    decoded = to_numpy(encoded_fn(**{contract.ENCODED_INPUT: tf.constant(encoded)}))
    for index in range(len(reference)):
        comparison = _compare_row(reference, index, decoded, index, tolerance)
        record(f"{contract.BYTES_SIGNATURE} image {index} (PNG, in a batch of {len(images)}) vs source", comparison)
    problem = _check_class_names(decoded, label_map)
    check(f"{contract.BYTES_SIGNATURE} class names", not problem, problem)

    info_fn = loaded.signatures[contract.INFO_SIGNATURE]
    info_spec = info_fn.structured_input_signature[1][contract.INFO_INPUT]
    height, width = info_spec.shape[1], info_spec.shape[2]
    expected_size = tuple(input_size) if input_size else (None, None)
    check("model_info input shape", (height, width) == expected_size,
          f"[-1, {height}, {width}, 3] (expected {expected_size})")
    if height and width:
        info = to_numpy(info_fn(**{contract.INFO_INPUT: tf.zeros([1, height, width, 3], tf.uint8)}))
        names = [n.decode() for n in info["class_names"][0]]
        ok = ((int(info["input_height"][0]), int(info["input_width"][0])) == (height, width)
              and dict(zip(info["class_ids"][0].tolist(), names, strict=True)) == dict(label_map)
              and set(info) == set(contract.INFO_OUTPUTS))
        check("model_info values", ok, f"{int(info['input_height'][0])}x{int(info['input_width'][0])}, {names}")

    if plain_tensorflow:
        check("plain TensorFlow (object_detection not imported)", "object_detection" not in sys.modules)

    first = images[rows[0]]
    if measure_latency and all(c["ok"] for c in checks):  # no point timing a model that failed
        for name, function, key, make in (
            (contract.DEFAULT_SIGNATURE, default, contract.IMAGES_INPUT, lambda b: tf.constant(np.stack([first] * b))),
            (contract.BYTES_SIGNATURE, encoded_fn, contract.ENCODED_INPUT, lambda b: tf.constant([encoded[rows[0]]] * b)),
        ):
            result["latency_ms"][name] = {}
            for size in LATENCY_BATCHES:
                value = make(size)
                result["latency_ms"][name][str(size)] = median_call_ms(lambda f=function, k=key, v=value: f(**{k: v}))
    result["image_size"] = [int(first.shape[0]), int(first.shape[1])]
    result["max_score_diff"], result["max_box_diff"], result["nms_flips"] = max_score, max_box, flips
    result["ok"] = all(c["ok"] for c in checks)
    return result


# ------------------------------------------------------------------------------------------------
# The exporter's end: the request file, the parameters, the process.

REQUEST_IMAGES = "images"
REQUEST_REFERENCE = "reference"
VERIFY_TIMEOUT_S = 900
EXIT_WITH_PARENT = "--exit-with-parent"
EXIT_ORPHANED = 3  # the child's exit code when the exporter died under it


def write_request(path: Path | str, images: list[np.ndarray], reference: list[Mapping[str, np.ndarray]]) -> None:
    arrays = {f"{REQUEST_IMAGES}_{i}": image for i, image in enumerate(images)}
    for i, outputs in enumerate(reference):
        for key in contract.NUMERIC_OUTPUTS:
            arrays[f"{REQUEST_REFERENCE}_{i}_{key}"] = np.asarray(outputs[key])
    np.savez(path, **arrays)


def read_request(path: Path | str) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    with np.load(path) as data:
        count = sum(1 for key in data.files if key.startswith(f"{REQUEST_IMAGES}_"))
        images = [data[f"{REQUEST_IMAGES}_{i}"] for i in range(count)]
        reference = [{key: data[f"{REQUEST_REFERENCE}_{i}_{key}"] for key in contract.NUMERIC_OUTPUTS}
                     for i in range(count)]
    return images, reference


def verify_in_subprocess(version_path: Path, built: BuiltModel, measure_latency: bool = True) -> dict:
    """Run ``main`` on ``version_path`` in a new Python process with plain TensorFlow; its JSON result.

    The request, parameters, result and the child's log go to a scratch directory beside the version, named
    as a staging directory (``<model_dir>/.tmp-export-<pid>-<hex>``): removed when this returns or raises, and
    by the next export's ``remove_stale_temp_dirs`` if this process is killed. The child exits with this
    process (``--exit-with-parent``).
    """
    with staging_dir(Path(version_path).parent) as scratch:
        scratch.mkdir()
        write_request(scratch / "request.npz", built.samples, built.reference)
        params = {"label_map": {str(k): v for k, v in built.label_map.items()},
                  "input_size": list(built.input_size) if built.input_size else None,
                  "measure_latency": measure_latency, "tolerance": built.tolerance.to_json()}
        (scratch / "params.json").write_text(json.dumps(params))
        env = dict(os.environ)
        env.pop("TF_USE_LEGACY_KERAS", None)  # set by tfod_compat for TFOD2; a server has no such thing
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        command = [sys.executable, "-m", "detserve.export.verify", EXIT_WITH_PARENT, str(version_path),
                   str(scratch / "request.npz"), str(scratch / "params.json"), str(scratch / "result.json")]
        log_path = scratch / "verify.log"
        code = _run_child(command, env, log_path, f"verification of {version_path}")
        result_file = scratch / "result.json"
        if not result_file.is_file():
            tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])
            raise ExportError(f"verification process failed (exit {code}): {tail}")
        return json.loads(result_file.read_text())


def _run_child(command: list[str], env: dict[str, str], log_path: Path, what: str) -> int:
    """Run ``command`` to its end (output to ``log_path``); its exit code.

    The child's stdin is a pipe whose only writer is this process and which nothing is written to: when this
    process dies, even by ``kill -9``, the kernel closes it and the child reads EOF (see ``_exit_with_parent``).
    Any exception here (timeout, Ctrl-C) kills the child first.
    """
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
    try:
        return process.wait(VERIFY_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise ExportError(f"{what} timed out after {VERIFY_TIMEOUT_S} s") from error
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdin.close()


def failed_checks(verification: Mapping) -> str:
    """The first three failed checks of a result, for the export's error message."""
    failed = [c for c in verification.get("checks", []) if not c["ok"]]
    return "; ".join(f"{c['name']}: {c['detail']}" for c in failed[:3]) or "unknown failure"


# ------------------------------------------------------------------------------------------------
# The fresh process's end.


def _exit_with_parent() -> None:
    """Exit as soon as stdin reaches end of file, i.e. when the exporter, which holds the pipe's only write end
    and writes nothing, has died (its kernel-closed descriptors include that end, whatever killed it).

    A pipe rather than Linux's ``prctl(PR_SET_PDEATHSIG)``: it works on every POSIX system, it has no race with a
    parent that dies before the child is ready (the end of file waits in the pipe), and it follows the process,
    where the death signal follows the *thread* that started the child (an export run from a worker thread
    would kill its verifier when that thread ends).
    """
    def watch() -> None:
        while os.read(0, 4096):
            pass
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """``python -m detserve.export.verify [--exit-with-parent] SAVED_MODEL REQUEST.npz PARAMS.json RESULT.json``"""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = list(argv if argv is not None else sys.argv[1:])
    if args[:1] == [EXIT_WITH_PARENT]:
        args.pop(0)
        _exit_with_parent()
    saved_model, request, params_path, result_path = args
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
