"""Throughput and latency of the embedded server (`detserve serve`) next to the in-process SavedModel.

One run measures, on this machine, for concurrency 1, 8 and 32 (closed loop: each client sends its next request
when the previous answer arrives):

- in-process: the exported SavedModel called directly (the ceiling). Batching off: N threads each calling the
  signature with one image. Batching on: one call with N images, the batch a perfectly fed server would run;
- gRPC: ``PredictionService/Predict`` with a uint8 tensor [1, 320, 320, 3] (serving_default), official stubs
  on grpc.aio, one client process;
- REST: ``POST /v1/models/<name>:predict`` with ``{"signature_name": "serving_bytes", "instances":
  [{"b64": <JPEG>}]}`` (aiohttp client);

against three servers started together: batching off; batching on with serving/batching.config, whose
``num_batch_threads`` (one per core of its 4-core container) is set to this machine's core count; and batching
on "tuned" for a 2-core CPU (5 ms timeout, no allowed_batch_sizes padding). Each throughput is a ratio of the
in-process one for the same signature, batching and concurrency (uint8 for gRPC, JPEG bytes for REST); every
server cell runs right after its in-process twin, over ``--rounds`` rounds (median throughput, latencies
pooled), so load from other processes shifts both alike. The targets of issue 4 are checked at the end.

    .venv/bin/python benchmarks/serving_benchmark.py --repository models [--model detector] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "face-mask-853" / "images"
CONCURRENCY = (1, 8, 32)


@dataclass
class Cell:
    path: str  # in-process | gRPC | REST
    payload: str  # uint8 | JPEG
    batching: str  # off | on | tuned
    concurrency: int
    images: int
    seconds: float
    latencies: list[float]
    errors: int = 0
    ratio: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] * 1000


def load_images(directory: Path | None, count: int, size: int) -> list[np.ndarray]:
    from PIL import Image

    images = []
    if directory and directory.is_dir():
        for path in sorted(directory.glob("*.jpg"))[:count]:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR)))
    rng = np.random.default_rng(0)
    while len(images) < count:
        images.append(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    return images


def jpeg(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# -- in-process ---------------------------------------------------------------------------------------------


class InProcess:
    """The exported SavedModel in this process: the ceiling."""

    def __init__(self, version_dir: Path, images: list[np.ndarray], jpegs: list[bytes]):
        import tensorflow as tf

        self.tf = tf
        loaded = tf.saved_model.load(str(version_dir))
        self._loaded = loaded
        self.calls = {
            "uint8": (loaded.signatures["serving_default"], "images", [tf.constant(i[None]) for i in images]),
            "JPEG": (loaded.signatures["serving_bytes"], "encoded_images", [tf.constant([j]) for j in jpegs]),
        }
        for function, name, singles in self.calls.values():  # trace and warm every batch shape used
            for concurrency in CONCURRENCY:
                function(**{name: self._batch(singles, concurrency)})

    def _batch(self, singles, size: int):
        return self.tf.concat([singles[i % len(singles)] for i in range(size)], axis=0)

    def cell(self, payload: str, batching: str, concurrency: int, seconds: float) -> Cell:
        function, name, singles = self.calls[payload]
        if batching != "off":  # one call with N images: the batch a perfectly fed server would run
            batch = self._batch(singles, concurrency)
            return _timed_calls(lambda i: function(**{name: batch}), 1, seconds, payload, batching, concurrency,
                                concurrency)
        return _timed_calls(lambda i: function(**{name: singles[i % len(singles)]}), concurrency, seconds, payload,
                            batching, concurrency, 1)


def _timed_calls(call, threads: int, seconds: float, payload: str, batching: str, concurrency: int,
                 images_per_call: int) -> Cell:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(index: int):
        local, counter = [], index
        while time.perf_counter() < stop:
            started = time.perf_counter()
            call(counter)
            counter += threads
            local.append(time.perf_counter() - started)
        with lock:
            latencies.extend(local)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    return Cell("in-process", payload, batching, concurrency, len(latencies) * images_per_call, elapsed, latencies)


# -- over the network ----------------------------------------------------------------------------------------


async def closed_loop(send, concurrency: int, seconds: float, warmup: float) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    measuring = asyncio.Event()
    stop_at = [0.0]

    async def client(index: int):
        nonlocal errors
        counter = index
        while True:
            if measuring.is_set() and time.perf_counter() >= stop_at[0]:
                return
            started = time.perf_counter()
            ok = await send(counter)
            counter += concurrency
            if measuring.is_set() and time.perf_counter() < stop_at[0]:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

    tasks = [asyncio.create_task(client(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    stop_at[0] = time.perf_counter() + seconds
    measuring.set()
    await asyncio.gather(*tasks)
    return latencies, errors, seconds


async def grpc_cell(target: str, model: str, images: list[np.ndarray], concurrency: int, seconds: float,
                    warmup: float, batching: str) -> Cell:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from detserve.serving.tensors import make_tensor_proto

    requests = []
    for image in images:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs["images"].CopyFrom(make_tensor_proto(image[None]))
        requests.append(request)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        async def send(i: int) -> bool:
            try:
                await stub.Predict(requests[i % len(requests)], timeout=120)
                return True
            except grpc.RpcError as error:
                print(f"    gRPC error: {error.code()} {error.details()}", file=sys.stderr)
                return False

        latencies, errors, elapsed = await closed_loop(send, concurrency, seconds, warmup)
    return Cell("gRPC", "uint8", batching, concurrency, len(latencies), elapsed, latencies, errors)


async def rest_cell(url: str, model: str, jpegs: list[bytes], concurrency: int, seconds: float, warmup: float,
                    batching: str) -> Cell:
    import aiohttp

    bodies = [json.dumps({"signature_name": "serving_bytes", "instances": [{"b64": base64.b64encode(j).decode()}]})
              for j in jpegs]
    endpoint = f"{url}/v1/models/{model}:predict"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def send(i: int) -> bool:
            async with session.post(endpoint, data=bodies[i % len(bodies)],
                                    headers={"Content-Type": "application/json"}) as reply:
                body = await reply.read()
                if reply.status != 200:
                    print(f"    REST error: {reply.status} {body[:200]!r}", file=sys.stderr)
                return reply.status == 200

        latencies, errors, elapsed = await closed_loop(send, concurrency, seconds, warmup)
    return Cell("REST", "JPEG", batching, concurrency, len(latencies), elapsed, latencies, errors)


def batching_file(args, directory: Path, tuned: bool) -> Path:
    """serving/batching.config with num_batch_threads = this machine's cores (the file's own rule: one thread per
    core of the container). ``tuned`` also sets a 5 ms timeout and drops allowed_batch_sizes (no
    padding), which is what a CPU-only 2-core machine gains most from (see docs/serving.md)."""
    from google.protobuf import text_format

    from detserve.serving import config as cfg

    if args.batching_parameters_file and not tuned:
        return Path(args.batching_parameters_file)
    params = cfg.load_batching_parameters(cfg.packaged_config("batching.config"))
    params.num_batch_threads.value = args.batch_threads or os.cpu_count() or 1
    if tuned:
        params.batch_timeout_micros.value = 5000
        del params.allowed_batch_sizes[:]
    path = directory / f"batching-{'tuned' if tuned else 'production'}.config"
    path.write_text(text_format.MessageToString(params))
    return path


def server_flags(repository: Path, model: str) -> list[str]:
    """`detserve serve` flags for a benchmark server: no repository polling, quiet logs."""
    flags = ["--repository", str(repository), "--file-system-poll-wait-seconds", "0", "--log-level", "warning"]
    if model != "detector":  # serving/models.config names `detector`
        flags += ["--model-name", model]
    return flags


def start_server(args, batching: str, directory: Path):
    sys.path.insert(0, str(ROOT / "tests"))  # the serving test harness (tests/serving_harness.py)
    from serving_harness import ServerProcess

    flags = server_flags(args.repository, args.model)
    if batching == "off":
        flags += ["--no-enable-batching"]
    else:
        flags += ["--batching-parameters-file", str(batching_file(args, directory, batching == "tuned"))]
    flags += args.server_flag
    return ServerProcess(flags, log_path=directory / f"server-batching-{batching}.log").start()


def merge(rounds: list[Cell]) -> Cell:
    """One cell from several rounds: the median throughput, latencies pooled."""
    best = sorted(rounds, key=lambda c: c.images_per_s)[len(rounds) // 2]
    latencies = [value for cell in rounds for value in cell.latencies]
    return Cell(best.path, best.payload, best.batching, best.concurrency, best.images, best.seconds, latencies,
                sum(c.errors for c in rounds))


BATCHING = {"off": "off", "on": "on (batching.config)", "tuned": "on (tuned)"}


def table(cells: list[Cell]) -> str:
    lines = ["| path | payload | batching | concurrency | images/s | p50 ms | p99 ms | × in-process |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for cell in cells:
        ratio = "1.00 (ceiling)" if cell.path == "in-process" else f"{cell.ratio:.2f}"
        errors = f" ({cell.errors} errors)" if cell.errors else ""
        batching = "off" if cell.batching == "off" else ("one call of N" if cell.path == "in-process"
                                                         else BATCHING[cell.batching])
        lines.append(f"| {cell.path} | {cell.payload} | {batching} | {cell.concurrency} | "
                     f"{cell.images_per_s:.1f}{errors} | {cell.percentile(50):.1f} | {cell.percentile(99):.1f} | "
                     f"{ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="detector")
    parser.add_argument("--version", type=int, default=None, help="Version to measure in-process [default: latest]")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="JPEGs to send (synthetic if absent)")
    parser.add_argument("--image-size", type=int, default=320, help="Clients resize to the model input, as documented")
    parser.add_argument("--seconds", type=float, default=5.0, help="Measured time per cell and round")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds over all cells (median throughput reported)")
    parser.add_argument("--warmup", type=float, default=1.0, help="Unmeasured time before each server cell")
    parser.add_argument("--batch-threads", type=int, default=0, help="num_batch_threads [default: cores]")
    parser.add_argument("--batching-parameters-file", default=None)
    parser.add_argument("--server-flag", action="append", default=[], help="Extra `detserve serve` flag (repeatable)")
    args = parser.parse_args()

    model_dir = args.repository / args.model
    versions = sorted(int(p.name) for p in model_dir.glob("*") if p.name.isdigit()) if model_dir.is_dir() else []
    if not versions:
        print(f"no exported model under {model_dir}: run `make export` (or detserve export --repository ...)",
              file=sys.stderr)
        return 2
    version_dir = model_dir / str(args.version or versions[-1])
    images = load_images(args.images, 16, args.image_size)
    jpegs = [jpeg(image) for image in images]
    print(f"model {version_dir}; {len(images)} images {args.image_size}x{args.image_size} "
          f"(JPEG {statistics.mean(map(len, jpegs)) / 1024:.0f} KiB); {os.cpu_count()} cores; "
          f"{args.rounds} round(s) of {args.seconds:g} s per cell", flush=True)

    rounds: dict[tuple, list[Cell]] = {}

    def record(cell: Cell) -> None:
        rounds.setdefault((cell.path, cell.payload, cell.batching, cell.concurrency), []).append(cell)
        print(f"  {cell.path:10} {cell.payload:5} batching {cell.batching:5} c={cell.concurrency:<2}"
              f" {cell.images_per_s:6.1f} img/s  p50 {cell.percentile(50):6.1f} ms", flush=True)

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        directory = Path(tmp)
        servers = {mode: start_server(args, mode, directory) for mode in ("off", "on", "tuned")}
        try:
            in_process = InProcess(version_dir, images, jpegs)
            for server in servers.values():
                server.wait_ready(args.model, timeout=900)
            # Every server cell runs right after its in-process twin, so load from other processes shifts both
            # alike; the idle servers wait on their sockets.
            for number in range(args.rounds):
                print(f"round {number + 1}/{args.rounds}:", flush=True)
                for concurrency in CONCURRENCY:
                    for payload in ("uint8", "JPEG"):
                        for mode in ("off", "on"):
                            record(in_process.cell(payload, mode, concurrency, args.seconds))
                        for mode, server in servers.items():
                            if payload == "uint8":
                                record(asyncio.run(grpc_cell(server.grpc_target, args.model, images, concurrency,
                                                             args.seconds, args.warmup, mode)))
                            else:
                                record(asyncio.run(rest_cell(server.rest_url, args.model, jpegs, concurrency,
                                                             args.seconds, args.warmup, mode)))
        finally:
            for server in servers.values():
                server.terminate()
    cells = [merge(cell_rounds) for cell_rounds in rounds.values()]

    ceiling = {(c.payload, c.batching, c.concurrency): c for c in cells if c.path == "in-process"}
    for cell in cells:
        if cell.path != "in-process":
            twin = "off" if cell.batching == "off" else "on"
            cell.ratio = cell.images_per_s / ceiling[(cell.payload, twin, cell.concurrency)].images_per_s
    order = {"in-process": 0, "gRPC": 1, "REST": 2}
    modes = {"off": 0, "on": 1, "tuned": 2}
    cells.sort(key=lambda c: (order[c.path], c.payload, modes[c.batching], c.concurrency))
    print()
    print(table(cells))
    print()
    base = ceiling[("uint8", "off", 1)].percentile(50)
    for mode in ("on", "tuned"):
        grpc_8 = next(c for c in cells if (c.path, c.batching, c.concurrency) == ("gRPC", mode, 8))
        print(f"target 1, gRPC batching {BATCHING[mode]}, concurrency 8: {grpc_8.ratio:.2f} x in-process batched "
              f"(>= 0.85) -> {'met' if grpc_8.ratio >= 0.85 else 'NOT met'}")
    for mode in ("off", "on", "tuned"):
        single = next(c for c in cells if (c.path, c.batching, c.concurrency) == ("gRPC", mode, 1))
        extra = single.percentile(50) - base
        print(f"target 2, gRPC batching {BATCHING[mode]}, one request at a time: p50 {single.percentile(50):.1f} ms = "
              f"in-process {base:.1f} ms + {extra:.1f} ms (<= +5 ms) -> {'met' if extra <= 5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
