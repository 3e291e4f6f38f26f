"""In-process latency and throughput of an exported version, for both detection signatures.

Loads ``<repository>/<name>/<version>`` with plain TensorFlow (no object_detection), as TF Serving would,
and calls the signatures directly (no server, no network): this is the model's own cost on this CPU.

- latency: batch 1, median and p90 over --runs calls;
- throughput: images/s at batch 1, 8 and 32 (median call time, --runs calls per size).

Inputs are what clients send under the serving contract (serving/batching.config): images already resized
to the model's input size (read from the model_info signature), uint8 for ``serving_default`` and JPEG
bytes (quality 90) for ``serving_bytes``. The images are the test split of --data if given, else noise.

    .venv/bin/python benchmarks/export_latency.py [--model models/detector/2] [--data runs/data] [--runs 20]

Without --model the highest version in models/detector is used.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BATCHES = (1, 8, 32)


def latest_version(model_dir: Path) -> Path:
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        sys.exit(f"no version in {model_dir}; run `make export` first")
    return model_dir / str(versions[-1])


def load_images(data: Path | None, size: tuple[int, int], count: int) -> list[np.ndarray]:
    from PIL import Image

    images = []
    if data is not None:  # plain TensorFlow: detserve.training's readers would load the TFOD2 compat layer
        import tensorflow as tf

        files = sorted(tf.io.gfile.glob(str(data / "test-?????-of-?????.tfrecord")))
        for record in tf.data.TFRecordDataset(files).take(count).as_numpy_iterator():
            encoded = tf.train.Example.FromString(record).features.feature["image/encoded"].bytes_list.value[0]
            images.append(np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB")))
    rng = np.random.default_rng(0)
    while len(images) < count:
        images.append(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8))
    return [np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR)) for image in images]


def jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def timed(function, runs: int) -> list[float]:
    function()  # warm-up, not measured
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="Version directory. Default: the newest in models/detector.")
    parser.add_argument("--data", type=Path, help="Data directory whose test split supplies the images.")
    parser.add_argument("--runs", type=int, default=20, help="Timed calls per measurement (default 20).")
    args = parser.parse_args()

    import tensorflow as tf

    path = args.model or latest_version(Path("models/detector"))
    loaded = tf.saved_model.load(str(path))
    info_input = loaded.signatures["model_info"].structured_input_signature[1]["images"]
    size = (info_input.shape[1] or 320, info_input.shape[2] or 320)
    images = load_images(args.data, size, max(BATCHES))
    encoded = [jpeg(image) for image in images]
    assert "object_detection" not in sys.modules

    print(f"model      {path}")
    print(f"machine    {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"TensorFlow {tf.__version__}, {args.runs} timed calls per cell")
    print(f"inputs     {size[0]}x{size[1]} images ({'test split of ' + str(args.data) if args.data else 'noise'}); "
          f"serving_bytes gets JPEG q90 (mean {np.mean([len(e) for e in encoded]) / 1000:.0f} kB)")
    print()
    header = f"{'signature':<16} {'b1 median ms':>12} {'b1 p90 ms':>10} " + " ".join(f"{f'img/s @{b}':>10}" for b in BATCHES)
    print(header)
    print("-" * len(header))
    for name, key, make in (
        ("serving_default", "images", lambda b: tf.constant(np.stack(images[:b]))),
        ("serving_bytes", "encoded_images", lambda b: tf.constant(encoded[:b])),
    ):
        function = loaded.signatures[name]
        cells = {}
        for batch in BATCHES:
            value = make(batch)
            cells[batch] = timed(lambda f=function, k=key, v=value: f(**{k: v}), args.runs)
        single = np.asarray(cells[1]) * 1000
        throughput = " ".join(f"{b / np.median(cells[b]):>10.1f}" for b in BATCHES)
        print(f"{name:<16} {np.median(single):>12.1f} {np.percentile(single, 90):>10.1f} {throughput}")


if __name__ == "__main__":
    main()
