"""Where the time goes, in one run: the model, the request path, cold start, a version swap, export, training.

    .venv/bin/python benchmarks/speed.py --repository models [--model-dir runs/model] [--data runs/data]
    make bench                                          # the same on the Makefile's paths

Each part prints a table with ratios against a baseline measured in the same run, on the same machine:

1. graph: the exported ``serving_default`` in this process at batch 1 and 8 (median of ``--calls`` calls); with
   ``--baseline REPOSITORY`` its latest version alternates with this one over 5 rounds, and the ratio is printed;
2. serving, closed loop at concurrency 1, 8 and 32: the in-process ceiling of each signature (uint8 images for
   gRPC, JPEG bytes for REST and the naive wrapper; one thread per client at concurrency 1; one call of N images
   above, the batch a perfectly fed server would run), a naive HTTP wrapper
   that calls the model once per request (what users write first: ``http.server`` + ``serving_bytes``), and the
   server over gRPC (uint8 tensor, ``serving_default``) and REST (b64 JPEG, ``serving_bytes``) with the
   production batching config (serving/batching.config, one batch thread per core here);
3. cold start: process start to the first AVAILABLE version, next to a bare ``import tensorflow`` (fresh
   processes, median of ``--cold-starts``);
4. swap: p99 of gRPC requests at concurrency 8 while a new version loads and warms up, next to the steady p99
   between swaps (``--swaps`` swaps, their median);

   3 and 4 run three times: on the version as exported, and on two copies whose warmup file holds one record per
   signature at the smallest or the largest batch size (``detserve export --warmup-batches smallest|largest``,
   for CPU servers);
5. export: ``detserve export`` of ``--model-dir`` (verification included), wall time (skipped without it);
6. training: images/s of ``detserve train`` next to TFOD2's ``model_main_tf2`` (benchmarks/train_throughput.py;
   ``--train-steps 0`` skips it).

The server is ``detserve serve`` unless ``--tf-serving IMAGE`` names TF Serving's container
(e.g. ``tensorflow/serving:2.19.1-gpu``): it is then started with ``docker run`` (``--gpus all`` when
nvidia-smi finds a GPU) on the same repository and the same batching config, so the same command measures a GPU
machine; the hardware (CPU model, cores, GPUs) heads the output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
sys.path[:0] = [str(BENCHMARKS), str(ROOT / "tests")]  # sibling benchmarks; tests/serving_harness.py

import serving_benchmark as serving  # noqa: E402
import soak  # noqa: E402

CONCURRENCY = serving.CONCURRENCY


def hardware() -> str:
    gpus = "no GPU"
    if shutil.which("nvidia-smi"):
        found = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True).stdout.strip()
        gpus = found.replace("\n", "; ") or gpus
    import tensorflow as tf

    return f"{soak.cpu_model()}; {gpus}; TensorFlow {tf.__version__}"


def latest_version(model_dir: Path) -> Path:
    from detserve.client.contract import version_dirs

    versions = version_dirs(model_dir) if model_dir.is_dir() else {}
    if not versions:
        sys.exit(f"no exported model under {model_dir}: run `make export` (or detserve export --repository ...)")
    return versions[max(versions)]


# -- 1. the graph --------------------------------------------------------------------------------------------


GRAPH_ROUNDS = 5


def graph_part(in_process: serving.InProcess, calls: int, baseline: Path | None) -> list[str]:
    """Median ms of ``serving_default`` at batch 1 and 8; with ``baseline`` (another export's version directory),
    both models alternate over GRAPH_ROUNDS rounds of ``calls`` calls (each after median_call_ms's unmeasured
    first call), and the ratio is of the rounds' medians."""
    import tensorflow as tf

    from detserve.export.verify import median_call_ms

    function, name, singles = in_process.calls["uint8"]
    models = {"this": function}
    if baseline is not None:
        loaded = tf.saved_model.load(str(baseline))  # kept: a signature alone lets the variables be collected
        models["baseline"] = loaded.signatures["serving_default"]
    header = "| batch | median ms | ms per image |" + (" baseline ms | x baseline |" if baseline else "")
    rows = [header, "|---:|---:|---:|" + ("---:|---:|" if baseline else "")]
    for batch in (1, 8):
        images = in_process._batch(singles, batch)
        medians: dict[str, list[float]] = {label: [] for label in models}
        for _ in range(GRAPH_ROUNDS if baseline else 1):
            for label, model in models.items():
                medians[label].append(median_call_ms(
                    lambda model=model, images=images: [t.numpy() for t in model(**{name: images}).values()], calls))
        ms = statistics.median(medians["this"])
        row = f"| {batch} | {ms:.1f} | {ms / batch:.1f} |"
        if baseline:
            before = statistics.median(medians["baseline"])
            row += f" {before:.1f} | {ms / before:.2f} |"
        rows.append(row)
    return rows


# -- 2. serving ----------------------------------------------------------------------------------------------


NAIVE_WRAPPER = '''
import base64, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import tensorflow as tf
detect = tf.saved_model.load(sys.argv[1]).signatures["serving_bytes"]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as every HTTP client expects
    disable_nagle_algorithm = True  # else headers and body leave as two segments and wait for a delayed ACK

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        images = tf.constant([base64.b64decode(i["b64"]) for i in body["instances"]])
        outputs = detect(encoded_images=images)
        answer = {k: v.numpy().tolist() for k, v in outputs.items() if v.dtype != tf.string}
        data = json.dumps({"predictions": answer}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)

    def log_message(self, *args):
        pass

ThreadingHTTPServer.request_queue_size = 64
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
print("ready", flush=True)
server.serve_forever()
'''


class NaiveWrapper:
    """The baseline users write: an HTTP server that runs the model once per request, in its own process."""

    def __init__(self, version_dir: Path):
        from serving_harness import free_port

        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, "-c", NAIVE_WRAPPER, str(version_dir), str(self.port)],
                                        stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the naive wrapper did not start")
        self.rest_url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def serving_part(args, in_process: serving.InProcess, server, naive: NaiveWrapper, images, jpegs) -> list[str]:
    rounds: dict[tuple, list[serving.Cell]] = {}
    for number in range(args.rounds):
        for concurrency in CONCURRENCY:
            mode = "off" if concurrency == 1 else "on"
            cells = [in_process.cell(payload, mode, concurrency, args.seconds) for payload in ("uint8", "JPEG")]
            cell = asyncio.run(serving.rest_cell(naive.rest_url, args.model, jpegs, concurrency, args.seconds,
                                                 args.warmup, "off"))
            cell.path = "naive wrapper"
            cells.append(cell)
            cells.append(asyncio.run(serving.grpc_cell(server.grpc_target, args.model, images, concurrency,
                                                       args.seconds, args.warmup, "on")))
            cells.append(asyncio.run(serving.rest_cell(server.rest_url, args.model, jpegs, concurrency,
                                                       args.seconds, args.warmup, "on")))
            for cell in cells:
                rounds.setdefault((cell.path, cell.payload, concurrency), []).append(cell)
                print(f"  round {number + 1}: {cell.path:13} {cell.payload:5} c={concurrency:<2} {cell.images_per_s:6.1f} img/s "
                      f"p50 {cell.percentile(50):6.1f} ms", flush=True)
    merged = {key: serving.merge(cells) for key, cells in rounds.items()}
    rows = ["| path | payload | concurrency | images/s | p50 ms | p99 ms | x ceiling | p50 - ceiling p50 ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (path, payload, concurrency), cell in merged.items():
        ceiling = merged[("in-process", payload, concurrency)]  # the same signature in this process
        errors = f" ({cell.errors} errors)" if cell.errors else ""
        rows.append(f"| {path} | {payload} | {concurrency} | {cell.images_per_s:.1f}{errors} | {cell.percentile(50):.1f} | "
                    f"{cell.percentile(99):.1f} | {cell.images_per_s / ceiling.images_per_s:.2f} | "
                    f"{cell.percentile(50) - ceiling.percentile(50):+.1f} |")
    return rows


# -- the server under test -----------------------------------------------------------------------------------


class Servers:
    """Starts the server under test on ``repository``: ``detserve serve``, or TF Serving's container."""

    def __init__(self, args, batching: Path, work: Path):
        self.args, self.batching, self.work = args, batching, work
        self.count = 0

    def start(self, repository: Path | None = None):
        from serving_harness import ServerProcess, free_port

        repository = repository or self.args.repository
        self.count += 1
        if not self.args.tf_serving:
            flags = serving.server_flags(repository, self.args.model)
            # Polling on: the swap part publishes a version for the server to find.
            flags += ["--batching-parameters-file", str(self.batching), "--file-system-poll-wait-seconds", "1"]
            return ServerProcess(flags, log_path=self.work / f"server-{self.count}.log").start()
        return TFServingContainer(self.args, repository, self.batching, free_port(), free_port()).start()


class TFServingContainer:
    """TF Serving's own image, with ServerProcess's interface (grpc_target, rest_url, wait_ready, terminate)."""

    def __init__(self, args, repository: Path, batching: Path, grpc_port: int, rest_port: int):
        self.args, self.batching = args, batching
        self.grpc_target, self.rest_url = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"
        self.name = f"detserve-bench-{os.getpid()}-{grpc_port}"
        gpus = ["--gpus", "all"] if shutil.which("nvidia-smi") else []
        self.command = ["docker", "run", "--rm", "--name", self.name, *gpus, "-p", f"{grpc_port}:8500",
                        "-p", f"{rest_port}:8501", "-v", f"{repository.resolve()}:/models:ro",
                        "-v", f"{batching}:/config/batching.config:ro", args.tf_serving,
                        f"--model_name={args.model}", f"--model_base_path=/models/{args.model}",
                        "--enable_batching", "--batching_parameters_file=/config/batching.config",
                        "--enable_model_warmup", "--file_system_poll_wait_seconds=1"]

    def start(self) -> TFServingContainer:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def wait_ready(self, model: str, timeout: float) -> None:
        from detserve.client import Detector, DetserveClientError

        deadline = time.monotonic() + timeout
        with Detector(self.rest_url, model=model) as detector:
            while time.monotonic() < deadline:
                try:
                    if detector.status(timeout=2).is_available():
                        return
                except DetserveClientError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"TF Serving ({self.args.tf_serving}) did not serve {model} within {timeout:g} s")

    def terminate(self) -> None:
        subprocess.run(["docker", "stop", self.name], capture_output=True)
        self.process.wait(60)


# -- 3. cold start, 4. swap ----------------------------------------------------------------------------------


def bare_import_s() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return time.perf_counter() - started


def one_size_warmup_repository(args, template: Path, work: Path, batching: Path, batches: str) -> tuple[Path, str]:
    """A repository holding a copy of version ``template`` whose warmup is one record per signature at the
    ``batches`` ("smallest" or "largest") batch size the server's ``batching`` config forms (``detserve export
    --warmup-batches ...``), and what its warmup file holds."""
    from serving_harness import install_version

    from detserve.export.warmup import warmup_batch_sizes, write_warmup_file

    copy = install_version(template, work / f"{batches}-warmup" / args.model, int(template.name))
    info = write_warmup_file(copy, args.model, warmup_batch_sizes([batching], batches))
    return copy.parents[1], f"{info.records} at batch {info.batch_sizes[0]}"


def exported_warmup(version_dir: Path) -> str:
    """What the warmup file of ``version_dir`` holds, as the swap table's heading names it."""
    from detserve.export.warmup import read_warmup_file, warmup_path

    path = warmup_path(version_dir)
    return f"{len(read_warmup_file(path)) if path.is_file() else 0} records as exported"


def cold_start_part(args, servers: Servers, variants: dict[str, Path]) -> list[str]:
    imports, starts = [], {label: [] for label in variants}
    for _ in range(args.cold_starts):
        imports.append(bare_import_s())
        for label, repository in variants.items():
            started = time.perf_counter()
            server = servers.start(repository)
            try:
                server.wait_ready(args.model, timeout=600)
                starts[label].append(time.perf_counter() - started)
            finally:
                server.terminate()
    bare = statistics.median(imports)
    rows = ["| what | median s | x bare import |", "|---|---:|---:|",
            f"| `python -c 'import tensorflow'` | {bare:.1f} | 1.00 |"]
    for label, seconds in starts.items():
        cold = statistics.median(seconds)
        rows.append(f"| server start to AVAILABLE, warmup {label} | {cold:.1f} | {cold / bare:.2f} |")
    return rows


SWAP_HEADER = ["| warmup | window | requests | p50 ms | p99 ms | p99 x steady | failed |",
               "|---|---|---:|---:|---:|---:|---:|"]


def swap_rows(args, server, images, repository: Path, label: str) -> list[str]:
    """Under steady load, ``--swaps`` times: a steady window, then publish the next version (a copy of the latest)
    and measure from the publish until 1 s after it serves. Each swap's p99 is set against the steady windows'."""
    model_dir = repository / args.model
    template = latest_version(model_dir)
    published_versions, windows, steady_windows = [], [], []
    load = soak.Load(server, args.model, images, concurrency=8, grpc_workers=8).start()
    try:
        time.sleep(args.warmup)
        for number in range(1, args.swaps + 1):
            steady_from = time.monotonic()
            time.sleep(args.seconds * 2)
            published = time.monotonic()
            steady_windows.append((steady_from, published))
            version = int(template.name) + number  # the next version, as detserve export would publish
            published_versions.append(version)
            soak.publish_version(template, model_dir, version)
            answered = soak.wait_version(server, args.model, version, timeout=600)
            time.sleep(1.0)
            windows.append((published, answered, time.monotonic()))
    finally:
        load.stop()
        for version in published_versions:
            shutil.rmtree(model_dir / str(version), ignore_errors=True)

    def within(start: float, end: float) -> list[float]:
        return [s.seconds for s in load.samples if s.ok and start <= s.started < end]

    steady = [seconds for window in steady_windows for seconds in within(*window)]
    p99_steady = soak.percentile(steady, 99)
    failed = sum(not s.ok for s in load.samples)
    rows = [f"| {label} | steady | {len(steady)} | {soak.percentile(steady, 50):.1f} | {p99_steady:.1f} | 1.00 | |"]
    ratios = []
    for number, (published, answered, ended) in enumerate(windows, 1):
        swapping = within(published, ended)
        p99 = soak.percentile(swapping, 99)
        ratios.append(p99 / p99_steady)
        rows.append(f"| {label} | swap {number}: publish to AVAILABLE + 1 s ({answered - published:.1f} s) | "
                    f"{len(swapping)} | {soak.percentile(swapping, 50):.1f} | {p99:.1f} | {ratios[-1]:.2f} | |")
    rows.append(f"| {label} | **median of {len(ratios)} swaps** | | | | **{statistics.median(ratios):.2f}** | "
                f"{failed} |")
    return rows


# -- 5. export, 6. training ----------------------------------------------------------------------------------


def export_part(args, work: Path) -> list[str]:
    detserve = Path(sys.executable).with_name("detserve")
    started = time.perf_counter()
    result = subprocess.run([str(detserve), "export", "--model-dir", str(args.model_dir), "--repository",
                             str(work / "export-repository")], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        return [f"export failed (exit {result.returncode}): {result.stderr.strip()[-400:]}"]
    verified = next((line.strip() for line in result.stdout.splitlines() if line.strip().startswith("verified")), "")
    return [f"`detserve export --model-dir {args.model_dir}`: {seconds:.1f} s wall, verification included",
            verified]


def training_part(args) -> list[str]:
    """benchmarks/train_throughput.py in its own process: TFOD2 needs its compatibility layer before TensorFlow's
    first import, and this process has imported TensorFlow already."""
    command = [sys.executable, str(BENCHMARKS / "train_throughput.py"), "--steps", str(args.train_steps)]
    result = subprocess.run(command + (["--data", str(args.data)] if args.data else []), capture_output=True, text=True)
    if result.returncode:
        return [f"training benchmark failed (exit {result.returncode}): {result.stderr.strip()[-400:]}"]
    return result.stdout.strip().splitlines()[-4:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="detector")
    parser.add_argument("--baseline", type=Path, help="another repository (e.g. an older export) whose latest "
                        "version the graph part times alternately with this one, for a same-run ratio")
    parser.add_argument("--model-dir", type=Path, help="training directory to time `detserve export` on")
    parser.add_argument("--data", type=Path, help="`detserve data` output for the training part (else synthetic)")
    parser.add_argument("--images", type=Path, default=serving.DEFAULT_IMAGES, help="JPEGs to send (synthetic if absent)")
    parser.add_argument("--calls", type=int, default=30, help="in-process calls per batch size (median)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per serving cell and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before each server cell")
    parser.add_argument("--cold-starts", type=int, default=2)
    parser.add_argument("--swaps", type=int, default=3, help="version swaps per warmup file (median p99 ratio)")
    parser.add_argument("--train-steps", type=int, default=300, help="0 skips the training part")
    parser.add_argument("--tf-serving", metavar="IMAGE", help="measure TF Serving's container instead of detserve serve")
    args = parser.parse_args()

    version_dir = latest_version(args.repository / args.model)
    images = serving.load_images(args.images, 16, 320)
    jpegs = [serving.jpeg(image) for image in images]
    print(f"# detserve speed\n\nmachine: {hardware()}\nmodel: {version_dir}; server: "
          f"{args.tf_serving or 'detserve serve'}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="detserve-speed-") as tmp:
        work = Path(tmp)
        batching = serving.batching_file(argparse.Namespace(batch_threads=0, batching_parameters_file=None), work,
                                         tuned=False)
        servers = Servers(args, batching, work)
        variants, held = {"as exported": args.repository}, [exported_warmup(version_dir)]
        for batches in ("smallest", "largest"):
            repository, holds = one_size_warmup_repository(args, version_dir, work, batching, batches)
            variants[f"{batches} batch only"] = repository
            held.append(holds)
        in_process = serving.InProcess(version_dir, images, jpegs)
        print("## 1. graph (in-process serving_default, 320x320 uint8)\n")
        baseline = latest_version(args.baseline / args.model) if args.baseline else None
        print("\n".join(graph_part(in_process, args.calls, baseline)), "\n", flush=True)
        server, naive = servers.start(), NaiveWrapper(version_dir)
        try:
            server.wait_ready(args.model, timeout=600)
            rows = serving_part(args, in_process, server, naive, images, jpegs)
            naive.stop()
            print("\n## 2. serving (closed loop; ceiling = in-process)\n\n" + "\n".join(rows) + "\n", flush=True)
            swap = swap_rows(args, server, images, args.repository, "as exported")
        finally:
            server.terminate()
            if naive.process.poll() is None:
                naive.stop()
        for label, repository in list(variants.items())[1:]:
            server = servers.start(repository)
            try:
                server.wait_ready(args.model, timeout=600)
                swap += swap_rows(args, server, images, repository, label)
            finally:
                server.terminate()
        print(f"## 4. version swap under load (gRPC, concurrency 8; warmup files: {'; '.join(held)})\n\n"
              + "\n".join(SWAP_HEADER + swap) + "\n", flush=True)
        del in_process
        print("## 3. cold start\n\n" + "\n".join(cold_start_part(args, servers, variants)) + "\n", flush=True)
        if args.model_dir:
            print("## 5. export\n\n" + "\n".join(export_part(args, work)) + "\n", flush=True)
        else:
            print("## 5. export\n\nskipped: no --model-dir\n")
    if args.train_steps:
        print("## 6. training (SSD MobileNetV2 FPN-Lite 0.5, batch 8)\n\n" + "\n".join(training_part(args)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
