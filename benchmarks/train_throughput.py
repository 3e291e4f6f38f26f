"""Training throughput of `detserve train` next to TFOD2's own `model_main_tf2`, same config, same run.

Both train SSD MobileNetV2 FPN-Lite 320x320 (batch 8 by default) on the same TFRecords from the same
pipeline.config, each in a fresh process, one after the other. Throughput is read the same way for
both: the `steps_per_sec` scalar that model_lib_v2 writes to TensorBoard every loop iteration;
the first iteration (graph tracing) is dropped and the median of the rest is reported as images/s.

    .venv/bin/python benchmarks/train_throughput.py [--data DIR] [--steps 300] [--batch-size 8]

Without --data a synthetic dataset is generated. model_main_tf2 runs 100 steps per loop iteration
(its default), so --steps should be a multiple of 100 and at least 300 for a median of >= 2 samples.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# model_main_tf2 cannot start on TF 2.21 without the compatibility layer; apart from that this is
# the stock entry point with its own flags and defaults.
TFOD_MAIN = (
    "import sys, detserve.training.tfod_compat\n"
    "from absl import app\n"
    "from object_detection import model_main_tf2\n"
    "sys.argv = ['model_main_tf2'] + sys.argv[1:]\n"
    "app.run(model_main_tf2.main)\n"
)


def steps_per_sec_from_events(train_dir: Path) -> list[float]:
    import tensorflow as tf

    values = []
    for events in sorted(train_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag == "steps_per_sec":
                    values.append(float(tf.make_ndarray(value.tensor)))
    return values


def run(command: list[str], label: str) -> float:
    started = time.time()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{label} failed:\n{result.stderr[-4000:]}")
    return time.time() - started


def prepare(data: Path | None, work: Path, batch_size: int, steps: int, depth_multiplier: float) -> Path:
    from detserve.training.data.convert import convert_dataset
    from detserve.training.data.synthetic import generate_voc_dataset
    from detserve.training.pipeline_config import TrainingOptions, write_pipeline_config

    if data is None:
        voc = generate_voc_dataset(work / "voc", num_images=200, seed=0)
        data = work / "data"
        convert_dataset("voc", data, annotations=voc.annotations_dir, images=voc.images_dir, progress=False, echo=None)
    options = TrainingOptions(data_dir=data, num_steps=steps, batch_size=batch_size, warmup_steps=min(100, steps // 10),
                              depth_multiplier=depth_multiplier)
    return write_pipeline_config(options, work / "pipeline.config")


def measure(data: Path | None, steps: int, batch_size: int, depth_multiplier: float) -> dict[str, tuple]:
    """{trainer: (images/s median, logged iterations, wall s)} for `detserve train` and TFOD2's model_main_tf2."""
    with tempfile.TemporaryDirectory(prefix="detserve-bench-") as tmp:
        work = Path(tmp)
        config = prepare(data, work, batch_size, steps, depth_multiplier)
        runs = {
            "detserve train": [sys.executable, "-c",
                               "import sys; from detserve.training.train import train; "
                               "train(sys.argv[1], int(sys.argv[2]), progress=False)",
                               str(work / "detserve"), str(steps)],
            "TFOD2 model_main_tf2": [sys.executable, "-c", TFOD_MAIN, f"--pipeline_config_path={config}",
                                     f"--model_dir={work / 'tfod'}", f"--num_train_steps={steps}"],
        }
        (work / "detserve").mkdir()
        (work / "detserve" / "pipeline.config").write_text(config.read_text())
        results = {}
        for label, command in runs.items():
            print(f"running {label} for {steps} steps ...", flush=True)
            seconds = run(command, label)
            model_dir = work / ("detserve" if label.startswith("detserve") else "tfod")
            rates = steps_per_sec_from_events(model_dir / "train")[1:]  # drop the tracing iteration
            if not rates:
                sys.exit(f"{label}: fewer than two logged iterations; use more --steps")
            results[label] = (statistics.median(rates) * batch_size, len(rates), seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="TFRecords + label_map.pbtxt from `detserve data`")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--depth-multiplier", type=float, default=0.5)
    args = parser.parse_args()

    results = measure(args.data, args.steps, args.batch_size, args.depth_multiplier)
    print(f"\nTraining throughput, SSD MobileNetV2 FPN-Lite {args.depth_multiplier} 320x320, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores, {args.steps} steps")
    print(f"{'trainer':<24}{'images/s (median)':>20}{'samples':>9}{'wall s':>9}{'ratio':>8}")
    baseline = results["TFOD2 model_main_tf2"][0]
    for label, (images_per_sec, samples, seconds) in results.items():
        print(f"{label:<24}{images_per_sec:>20.2f}{samples:>9}{seconds:>9.0f}{images_per_sec / baseline:>8.2f}")


if __name__ == "__main__":
    main()
