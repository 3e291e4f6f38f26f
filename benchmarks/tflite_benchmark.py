"""SavedModel vs its TFLite exports: accuracy on a split, batch-1 latency, size (docs/export.md, "TFLite for phones
and edge boxes").

For the SavedModel version and each .tflite (`detserve export --format tflite`, its .json sidecar beside it):

- mAP and mAP@.50 on --split of --data, by the project's evaluator (training.evaluation.evaluate) through
  saved_model_predictor / tflite_predictor: the same images, resize and metrics for every row;
- batch-1 latency, median (and p90) of --runs timed calls after one warm-up, on --threads threads: the model's
  own call on an input already at its size (serving_default with uint8 pixels; the TFLite interpreter, XNNPACK,
  with the prepared float32 input), no resize, no server;
- size on disk (the version directory; the .tflite file).

    .venv/bin/python benchmarks/tflite_benchmark.py --model models/detector/1 --data runs/data \\
        --tflite tflite/detector-float16.tflite --tflite tflite/detector-int8.tflite
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The project's TFRecord reader and evaluator import the TFOD2 compat layer, which must precede TensorFlow.
import detserve.training.tfod_compat  # noqa: E402, F401, I001
MAP, MAP50 = "DetectionBoxes_Precision/mAP", "DetectionBoxes_Precision/mAP@.50IOU"


def timed(function, runs: int) -> np.ndarray:
    function()  # warm-up (XNNPACK packs weights, TensorFlow traces): not measured
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return np.asarray(times) * 1000


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="SavedModel version directory (<repository>/<name>/<v>).")
    parser.add_argument("--tflite", type=Path, action="append", default=[], help=".tflite to compare (repeatable).")
    parser.add_argument("--data", type=Path, required=True, help="`detserve data` directory.")
    parser.add_argument("--split", default="test", help="Split evaluated (default test).")
    parser.add_argument("--runs", type=int, default=30, help="Timed batch-1 calls per model (default 30).")
    parser.add_argument("--threads", type=int, default=2, help="Threads for TensorFlow and TFLite (default 2).")
    args = parser.parse_args()

    import tensorflow as tf

    # The same thread budget for both runtimes: TensorFlow's intra-op pool is what a single call uses.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from detserve.client.images import resize_bilinear
    from detserve.export.repository import directory_size
    from detserve.training.data.label_map import read_label_map
    from detserve.training.data.tfrecord import read_examples, split_pattern
    from detserve.training.evaluation.evaluate import evaluate
    from detserve.training.evaluation.predictors import saved_model_predictor
    from detserve.training.evaluation.tflite_predictor import (
        TFLiteMetadata,
        detection_runner,
        load_interpreter,
        metadata_path,
        prepare_input,
        tflite_predictor,
    )

    labels = read_label_map(args.data / "label_map.pbtxt")
    image = next(iter(read_examples(split_pattern(args.data, args.split)))).image
    rows = []

    def score(predictor, name: str) -> dict:
        with tempfile.TemporaryDirectory() as out:
            return evaluate(predictor, args.data, labels, out, split=args.split, grid_images=0, progress=False,
                            model_info={"kind": name})

    metrics = score(saved_model_predictor(args.model), "saved_model")
    loaded = tf.saved_model.load(str(args.model))
    info = loaded.signatures["model_info"].structured_input_signature[1]["images"]
    size = (info.shape[1] or 320, info.shape[2] or 320)
    pixels = tf.constant(resize_bilinear(image, size)[np.newaxis])
    latency = timed(lambda: loaded.signatures["serving_default"](images=pixels), args.runs)
    rows.append(("SavedModel (TensorFlow)", metrics, latency, directory_size(args.model)))

    for path in args.tflite:
        metadata = TFLiteMetadata.read(metadata_path(path))
        metrics = score(tflite_predictor(path, args.threads), "tflite")
        run = detection_runner(load_interpreter(path, args.threads), str(path))
        prepared = prepare_input(image, metadata)
        latency = timed(lambda run=run, prepared=prepared: run(prepared), args.runs)
        rows.append((f"TFLite {metadata.quantize} (XNNPACK)", metrics, latency, path.stat().st_size))

    num_images = sum(1 for _ in read_examples(split_pattern(args.data, args.split)))
    print(f"model    {args.model}; data {args.data} split {args.split} ({num_images} images)")
    print(f"machine  {cpu_name()}, {os.cpu_count()} CPUs visible, {args.threads} threads, TensorFlow {tf.__version__}, "
          f"batch 1 at {size[0]}x{size[1]}, {args.runs} timed calls after a warm-up")
    print()
    print("| model | mAP | mAP@.50 | batch-1 median ms | p90 ms | size MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, metrics, latency, size_bytes in rows:
        print(f"| {name} | {metrics[MAP]:.4f} | {metrics[MAP50]:.4f} | {np.median(latency):.1f} | "
              f"{np.percentile(latency, 90):.1f} | {size_bytes / 1e6:.1f} |")


if __name__ == "__main__":
    main()
