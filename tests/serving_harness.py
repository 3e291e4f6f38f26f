"""The embedded server's test harness (tests and benchmarks): tiny SavedModels with the detector's signatures,
installed the way exports publish, and ``detserve serve`` processes on free local ports. Warmup files are
written by ``detserve.export.warmup`` (the exporter's own writer).

The tiny model has the exported detector's interface (``serving_default``: uint8 images; ``serving_bytes``:
encoded JPEG/PNG; the five detection outputs, 100 detections) and answers in microseconds, with values a test
can check: ``num_detections`` is the model's version number, ``detection_scores[:, 0]`` is the mean pixel / 255.
It also has ``slow`` (busy-waits ``seconds``, for in-flight and drain tests) and ``total`` (sums a batch into a
scalar: a signature that cannot be batched).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detserve.export.warmup import BatchSizes, write_warmup_file

MAX_DETECTIONS = 100
CLASS_NAMES = ("mask", "no_mask", "incorrect_mask")


def build_tiny_detector(path: Path | str, version: int = 1) -> Path:
    """Save the tiny detector to ``path`` (a version directory); returns it."""
    import tensorflow as tf

    path = Path(path)
    names = tf.constant(list(CLASS_NAMES))

    def detections(means):  # means: float32 [B], in [0, 1]
        batch = tf.shape(means)[0]
        ramp = tf.linspace(1.0, 0.0, MAX_DETECTIONS)
        scores = tf.minimum(means[:, None] * tf.ones([1, MAX_DETECTIONS]), ramp[None, :])
        scores = tf.concat([means[:, None], scores[:, 1:]], axis=1)
        corner = tf.linspace(0.0, 0.5, MAX_DETECTIONS)
        boxes = tf.stack([corner, corner, corner + 0.5, corner + 0.5], axis=1)
        boxes = tf.tile(boxes[None], [batch, 1, 1])
        classes = tf.tile(tf.cast(tf.range(MAX_DETECTIONS) % len(CLASS_NAMES) + 1, tf.float32)[None], [batch, 1])
        class_names = tf.gather(names, tf.cast(classes, tf.int32) - 1)
        return {
            "detection_boxes": boxes,
            "detection_scores": scores,
            "detection_classes": classes,
            "num_detections": tf.fill([batch], tf.constant(float(version))),
            "detection_class_names": class_names,
        }

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        def serving_default(self, images):
            return detections(tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2, 3]) / 255.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="encoded_images")])
        def serving_bytes(self, encoded_images):
            def mean(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.reduce_mean(tf.cast(image, tf.float32)) / 255.0

            return detections(tf.map_fn(mean, encoded_images, fn_output_signature=tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="seconds")])
        def slow(self, seconds):
            deadline = tf.timestamp() + tf.cast(tf.reduce_max(seconds), tf.float64)
            waited = tf.while_loop(lambda t: t < deadline, lambda t: [tf.timestamp()], [tf.timestamp()])
            return {"waited": seconds + 0.0 * tf.cast(waited, tf.float32),
                    "version": tf.fill(tf.shape(seconds), tf.constant(version, tf.int64))}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def total(self, x):
            return {"sum": tf.reduce_sum(x)}

    module = Tiny()
    signatures = {
        "serving_default": module.serving_default.get_concrete_function(),
        "serving_bytes": module.serving_bytes.get_concrete_function(),
        "slow": module.slow.get_concrete_function(),
        "total": module.total.get_concrete_function(),
    }
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


def build_half_plus_three(path: Path | str) -> Path:
    """TF Serving's REST example model: ``y = 0.5 * x + 3`` on float ``x`` [None] (serving_default)."""
    import tensorflow as tf

    class HalfPlusThree(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serving_default(self, x):
            return {"y": 0.5 * x + 3.0}

    module = HalfPlusThree()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serving_default.get_concrete_function()})
    return Path(path)


def build_three_inputs(path: Path | str) -> Path:
    """The REST guide's row/columnar example: inputs ``tag`` (string), ``signal`` (float [5]) and ``sensor``
    (float [2, 2]) per row; outputs their per-row echo and sums."""
    import tensorflow as tf

    class ThreeInputs(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="tag"),
                                      tf.TensorSpec([None, 5], tf.float32, name="signal"),
                                      tf.TensorSpec([None, 2, 2], tf.float32, name="sensor")])
        def serving_default(self, tag, signal, sensor):
            return {"tag_upper": tf.strings.upper(tag),
                    "signal_sum": tf.reduce_sum(signal, axis=1),
                    "sensor_sum": tf.reduce_sum(sensor, axis=[1, 2])}

    module = ThreeInputs()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serving_default.get_concrete_function()})
    return Path(path)


_TEMPLATES: dict[tuple, Path] = {}


def cached_model(kind: str, cache_dir: Path | str, version: int = 1, warmup: Sequence[int] | None = (1, 2)) -> Path:
    """A model built once per process into ``cache_dir`` (kinds: tiny, half_plus_three, three_inputs); copy it
    into a repository with :func:`install_version`."""
    key = (kind, str(cache_dir), version, tuple(warmup or ()))
    if key not in _TEMPLATES or not _TEMPLATES[key].exists():
        target = Path(cache_dir) / f"{kind}-v{version}-w{'_'.join(map(str, warmup or ())) or 'none'}"
        if target.exists():
            shutil.rmtree(target)
        if kind == "tiny":
            build_tiny_detector(target, version)
            if warmup:
                write_warmup(target, warmup)
        elif kind == "half_plus_three":
            build_half_plus_three(target)
        elif kind == "three_inputs":
            build_three_inputs(target)
        else:
            raise ValueError(kind)
        _TEMPLATES[key] = target
    return _TEMPLATES[key]


def write_warmup(version_dir: Path | str, batch_sizes: Sequence[int], model_name: str = "detector") -> Path:
    """The exporter's warmup file for ``batch_sizes`` (serving_default and serving_bytes records)."""
    return write_warmup_file(version_dir, model_name, BatchSizes(sizes=list(batch_sizes), sources=[], notes=[])).path


def install_version(template: Path | str, model_dir: Path | str, version: int) -> Path:
    """Copy a version directory into ``model_dir/<version>`` the way exports publish: build hidden, rename."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-install-", dir=model_dir))
    shutil.copytree(template, staging, dirs_exist_ok=True)
    target = model_dir / str(version)
    os.rename(staging, target)
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_bytes(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A process's resident memory now (VmRSS) or its peak so far (VmHWM), from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak_memory(pid: int | str = "self") -> None:
    """Reset a process's VmHWM to its current VmRSS (Linux clear_refs), so a later peak shows."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def predict_request(inputs: dict, model: str = "detector", signature: str = "", version: int | None = None,
                    label: str = "", output_filter=()):
    """A PredictRequest (``tensorflow_serving.apis``); ``inputs`` values are TensorProtos or numpy arrays."""
    from tensorflow_serving.apis import predict_pb2

    from detserve.serving.tensors import make_tensor_proto

    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if isinstance(value, type(request.inputs[name])) else make_tensor_proto(value))
    return request


def encode_image(array: np.ndarray, format: str = "JPEG", quality: int = 90) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **({"quality": quality} if format == "JPEG" else {}))
    return buffer.getvalue()


class ServerAddresses:
    """The URLs of a server with ``host``, ``grpc_port``, ``rest_port`` and ``tls`` (plain unless set)."""

    host = "127.0.0.1"
    tls = False

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def grpc_url(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://{self.grpc_target}"

    @property
    def rest_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.rest_port}"

    def url(self, transport: str) -> str:
        return self.grpc_url if transport == "grpc" else self.rest_url


@dataclass
class ServerProcess(ServerAddresses):
    """A ``detserve serve`` subprocess on 127.0.0.1 with free ports; its log goes to ``log_path``."""

    args: list[str]
    grpc_port: int = field(default_factory=free_port)
    rest_port: int = field(default_factory=free_port)
    log_path: Path | None = None
    env: dict | None = None
    process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="detserve-serve-", suffix=".log")[1])
        command = [sys.executable, "-m", "detserve.serving.cli", "--host", "127.0.0.1", "--port", str(self.grpc_port),
                   "--rest-api-port", str(self.rest_port), *self.args]
        env = dict(os.environ, **(self.env or {}))
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def wait_ready(self, model: str = "detector", timeout: float = 120.0) -> None:
        """Until ``model`` has an AVAILABLE version over REST (or the process died)."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                reply = requests.get(f"{self.rest_url}/v1/models/{model}", timeout=2)
                if reply.ok and any(v["state"] == "AVAILABLE" for v in reply.json()["model_version_status"]):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()[-4000:]}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code (kills after ``timeout``)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.terminate()
        except subprocess.TimeoutExpired:
            pass
