"""A/B of BatchingParameters files on the embedded server: throughput and the batches they form.

For each config in turn (interleaved over ``--rounds`` rounds, so load from other processes shifts all alike), one
`detserve serve` process with batching on; closed-loop gRPC (uint8, serving_default) and REST (b64 JPEG,
serving_bytes) clients at ``--concurrency``; prints images/s (median over rounds) and the mean
``processed_batch_size`` (padding included) read from the server's Prometheus metrics before and after each cell.

    .venv/bin/python benchmarks/batching_configs.py --repository models serving/batching.config my.config
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families
from serving_benchmark import DEFAULT_IMAGES, ROOT, grpc_cell, jpeg, load_images, rest_cell, server_flags

sys.path.insert(0, str(ROOT / "tests"))  # the serving test harness (tests/serving_harness.py)
from serving_harness import ServerProcess  # noqa: E402

BATCH_SIZE_METRIC = ":tensorflow:serving:batching_session:processed_batch_size"


def processed_batches(rest_url: str) -> tuple[float, float]:
    """(sum, count) of the processed_batch_size histogram over all its label sets."""
    text = requests.get(f"{rest_url}/monitoring/prometheus/metrics", timeout=10).text
    totals = {"_sum": 0.0, "_count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for suffix in totals:
                if sample.name == BATCH_SIZE_METRIC + suffix:
                    totals[suffix] += sample.value
    return totals["_sum"], totals["_count"]


def measure(config: Path, args, images, jpegs, log_dir: Path) -> dict[str, tuple[float, float]]:
    """{transport: (images/s, mean processed batch)} for one server started on ``config``."""
    flags = server_flags(args.repository, args.model) + ["--batching-parameters-file", str(config)]
    server = ServerProcess(flags, log_path=log_dir / f"{config.stem}.log").start()
    results = {}
    try:
        server.wait_ready(args.model, timeout=900)
        for transport in ("gRPC", "REST"):
            before = processed_batches(server.rest_url)
            if transport == "gRPC":
                cell = asyncio.run(grpc_cell(server.grpc_target, args.model, images, args.concurrency, args.seconds,
                                             args.warmup, "on"))
            else:
                cell = asyncio.run(rest_cell(server.rest_url, args.model, jpegs, args.concurrency, args.seconds,
                                             args.warmup, "on"))
            after = processed_batches(server.rest_url)
            batches = after[1] - before[1]
            results[transport] = (cell.images_per_s, (after[0] - before[0]) / batches if batches else float("nan"))
    finally:
        server.terminate()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="BatchingParameters text files to compare")
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--model", default="detector")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="JPEGs to send (synthetic if absent)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="Measured time per cell and round")
    parser.add_argument("--warmup", type=float, default=1.0, help="Unmeasured time before each cell")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    missing = [str(path) for path in args.configs if not path.is_file()]
    if missing:
        print(f"batching config not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    images = load_images(args.images, 16, 320)
    jpegs = [jpeg(image) for image in images]
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="batching-ab-") as tmp:
        for number in range(args.rounds):
            for config in args.configs:
                for transport, result in measure(config, args, images, jpegs, Path(tmp)).items():
                    runs.setdefault((str(config), transport), []).append(result)
                    print(f"round {number + 1} {config} {transport}: {result[0]:.1f} images/s, "
                          f"mean processed batch {result[1]:.2f}", flush=True)
    print(f"\n| config | transport | images/s (median of {args.rounds}) | mean processed batch |")
    print("|---|---|---:|---:|")
    for (config, transport), results in runs.items():
        print(f"| {config} | {transport} | {statistics.median(r[0] for r in results):.1f} | "
              f"{statistics.mean(r[1] for r in results):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
