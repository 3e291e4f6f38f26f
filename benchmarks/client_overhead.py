#!/usr/bin/env python3
"""Client-side cost of one detection request with detserve-client: encode + decode, gRPC vs REST.

    .venv/bin/python benchmarks/client_overhead.py                  # overhead table (about 30 s)
    .venv/bin/python benchmarks/client_overhead.py --install        # + install size/time of detserve-client
    .venv/bin/python benchmarks/client_overhead.py --install --with-tensorflow-serving-api
                                                                    # + the same for tensorflow-serving-api
                                                                    #   (downloads ~600 MB; minutes)

"encode" is everything from an in-memory RGB image (numpy uint8) to the bytes handed to the transport:
loading, the TensorFlow-exact resize to the model's 320x320, and building the serialised PredictRequest
(gRPC) or the JSON body (REST: base64 JPEG, or JSON lists of pixels). "decode" is from the response bytes of
a 100-detection answer (TFOD2's 5 outputs) to the list of Detection objects. No server is involved: this is
what the client adds to each call, on top of the network and the model. Medians over --repeat runs.

Install numbers: a fresh venv in a temporary directory, ``pip install --no-cache-dir <spec>`` timed, then
``du`` of its site-packages minus that of the empty venv. Only the client is importable by this script's
core, so it also runs in a client-only environment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from detserve.client.core import DetectorCore
from detserve.client.detections import detections_from
from detserve.client.images import load_image
from detserve.client.metadata import ModelMetadata, Signature, TensorSpec
from detserve.client.protos import predict_pb2
from detserve.client.tensors import make_tensor_proto

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = {"detection_boxes": ("DT_FLOAT", (None, 100, 4)), "detection_scores": ("DT_FLOAT", (None, 100)),
           "detection_classes": ("DT_FLOAT", (None, 100)), "num_detections": ("DT_FLOAT", (None,)),
           "detection_class_names": ("DT_STRING", (None, 100))}
# Measured once on this project's 2-core machine, 2025-11 (see docs/client.md), for runs without
# --with-tensorflow-serving-api: seconds, MB of site-packages, packages installed.
RECORDED_TFSA = {"seconds": 34.8, "megabytes": 2151.4, "packages": 32,
                 "note": "tensorflow-serving-api 2.21.0 -> tensorflow 2.21.0 (572 MB wheel) + 30 others"}


def metadata() -> ModelMetadata:
    outputs = {k: TensorSpec(k, dtype, shape) for k, (dtype, shape) in OUTPUTS.items()}
    signatures = {
        "serving_default": Signature("serving_default", "tensorflow/serving/predict",
                                     {"images": TensorSpec("images", "DT_UINT8", (None, None, None, 3))}, outputs),
        "serving_bytes": Signature("serving_bytes", "tensorflow/serving/predict",
                                   {"encoded_images": TensorSpec("encoded_images", "DT_STRING", (None,))}, outputs),
    }
    return ModelMetadata("detector", 1, signatures, input_size=(320, 320))


def core(server: str, encoding: str, input_size=None) -> DetectorCore:
    return DetectorCore(server, "detector", None, None, encoding=encoding, signature=None, score_threshold=0.0,
                        max_detections=None, timeout=10.0, retry=None, headers=None, ca_cert=None,
                        client_cert=None, client_key=None, server_name=None, max_message_bytes=1 << 30,
                        input_size=input_size, resize_method="bilinear_legacy", jpeg_quality=95, max_batch_size=32)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like image: smooth colour fields, a few blobs, mild sensor noise (JPEG sizes like a photo's)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([128 + 90 * np.sin(x / (width / 7) + y / (height / 3)), 120 + 80 * np.cos(y / (height / 5)),
                      110 + 70 * np.sin((x + y) / (width / 4))], axis=-1)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.02, 0.15) * width
        image += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(-90, 90, size=3)
    image += rng.normal(0, 3, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def jpeg_file(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def wire_request(c: DetectorCore, meta: ModelMetadata, image):
    """The Predict request detect() sends for ``image`` (what the transport gets)."""
    plan = c.plan(meta, [image])
    (batch,) = plan.batches
    return c.wire.predict(plan.signature, {plan.signature.input.key: batch.payload}, OUTPUTS).message


def encode_grpc(c: DetectorCore, meta: ModelMetadata, image) -> bytes:
    return wire_request(c, meta, image).SerializeToString()


def encode_rest(c: DetectorCore, meta: ModelMetadata, image) -> bytes:
    return json.dumps(wire_request(c, meta, image).body, separators=(",", ":")).encode()  # as RestTransport does


def fake_answer(rng: np.random.Generator) -> dict[str, np.ndarray]:
    scores = np.sort(rng.random((1, 100), dtype=np.float32))[:, ::-1]
    return {"detection_boxes": rng.random((1, 100, 4), dtype=np.float32), "detection_scores": scores,
            "detection_classes": rng.integers(1, 4, (1, 100)).astype(np.float32),
            "num_detections": np.array([100.0], np.float32),
            "detection_class_names": np.array([[b"with_mask"] * 100], dtype=object)}


def grpc_response_bytes(outputs: dict[str, np.ndarray]) -> bytes:
    response = predict_pb2.PredictResponse()
    for key, value in outputs.items():
        if value.dtype == object:
            proto = make_tensor_proto(list(value.reshape(-1)))
            del proto.tensor_shape.dim[:]
            for size in value.shape:
                proto.tensor_shape.dim.add().size = size
        else:
            proto = make_tensor_proto(value)
        response.outputs[key].CopyFrom(proto)
    return response.SerializeToString()


def rest_response_bytes(outputs: dict[str, np.ndarray]) -> bytes:
    as_json = {k: (np.vectorize(lambda b: b.decode(), otypes=[object])(v).tolist() if v.dtype == object
                   else v.tolist()) for k, v in outputs.items()}
    return json.dumps({"outputs": as_json}).encode()


def median_ms(function, repeat: int) -> float:
    function()  # warm up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def overhead_table(repeat: int) -> list[dict]:
    meta = metadata()
    rng = np.random.default_rng(0)
    answer = fake_answer(rng)
    grpc_answer, rest_answer = grpc_response_bytes(answer), rest_response_bytes(answer)
    grpc_core, rest_core = core("grpc://localhost:8500", "raw"), core("http://localhost:8501", "jpeg")
    rest_raw_core = core("http://localhost:8501", "raw")
    signature = meta.signatures["serving_default"]
    reference_image = load_image(np.zeros((1, 1, 3), np.uint8))
    grpc_parse = grpc_core.wire.predict(signature, {}, OUTPUTS).parse
    rest_parse = rest_core.wire.predict(signature, {}, OUTPUTS).parse

    def decode_grpc():
        outputs = grpc_parse(predict_pb2.PredictResponse.FromString(grpc_answer))
        return detections_from(outputs, 0, reference_image, 0.0, None, None)

    def decode_rest():
        outputs = rest_parse(json.loads(rest_answer))
        return detections_from(outputs, 0, reference_image, 0.0, None, None)

    decode = {"gRPC": median_ms(decode_grpc, repeat), "REST": median_ms(decode_rest, repeat)}
    rows = []
    for height, width in ((320, 320), (1080, 1920)):
        image = photo(height, width)
        file_bytes = jpeg_file(image)
        cases = [
            ("gRPC", "raw uint8, resized to 320x320 (default)", partial(encode_grpc, grpc_core, meta, image)),
            ("gRPC", "JPEG file bytes as they are", partial(encode_grpc, core("grpc://h:1", "jpeg"), meta, file_bytes)),
            ("REST", "b64 JPEG of 320x320 resize (default)", partial(encode_rest, rest_core, meta, image)),
            ("REST", "b64 JPEG file bytes as they are", partial(encode_rest, rest_core, meta, file_bytes)),
            ("REST", "JSON lists of 320x320 pixels", partial(encode_rest, rest_raw_core, meta, image)),
        ]
        if height > 320:
            cases.insert(1, ("gRPC", "raw uint8, not resized (naive client)",
                             partial(encode_grpc, core("grpc://h:1", "raw", input_size=(height, width)), meta, image)))
            cases.append(("REST", "JSON lists, not resized (naive client)",
                          partial(encode_rest, core("http://h:1", "raw", input_size=(height, width)), meta, image)))
        for transport, what, function in cases:
            size = len(function())
            encode_ms = median_ms(function, repeat if size < 5e6 else max(3, repeat // 5))
            rows.append({"input": f"{width}x{height}", "transport": transport, "request": what,
                         "request_bytes": size, "encode_ms": encode_ms, "decode_ms": decode[transport],
                         "total_ms": encode_ms + decode[transport]})
    return rows


def print_overhead(rows: list[dict]) -> None:
    print("Client-side overhead per request (median ms; response: 100 detections, 5 outputs)")
    print(f"{'input':<10} {'transport':<9} {'request':<42} {'bytes':>11} {'encode':>8} {'decode':>8} {'total':>8}")
    for row in rows:
        print(f"{row['input']:<10} {row['transport']:<9} {row['request']:<42} {row['request_bytes']:>11,} "
              f"{row['encode_ms']:>8.2f} {row['decode_ms']:>8.2f} {row['total_ms']:>8.2f}")


def _site_packages_bytes(venv: Path) -> int:
    (site,) = venv.glob("lib/python*/site-packages")
    return sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink())


def measure_install(spec: str, label: str) -> dict:
    """Fresh venv, ``pip install --no-cache-dir spec``: wall time, site-packages growth, package count.
    A local directory is copied first (setuptools builds in the source tree)."""
    root = Path(tempfile.mkdtemp(prefix="detserve-install-"))
    try:
        if Path(spec).is_dir():
            source = root / "source"
            shutil.copytree(spec, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
            spec = str(source)
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        subprocess.run([*pip, "install", "--quiet", "--upgrade", "pip"], check=True)
        before = _site_packages_bytes(venv)
        packages_before = len(subprocess.run([*pip, "list", "--format=freeze"], check=True, capture_output=True,
                                             text=True).stdout.split())
        started = time.perf_counter()
        subprocess.run([*pip, "install", "--no-cache-dir", "--quiet", spec], check=True)
        seconds = time.perf_counter() - started
        after = _site_packages_bytes(venv)
        packages = len(subprocess.run([*pip, "list", "--format=freeze"], check=True, capture_output=True,
                                      text=True).stdout.split()) - packages_before
        check = None
        if label == "detserve-client":  # the command works with only the client installed
            result = subprocess.run([str(venv / "bin" / "detserve"), "detect", "--help"], capture_output=True,
                                    text=True)
            imported = subprocess.run([str(venv / "bin" / "python"), "-c",
                                       "import importlib.util as u; print(u.find_spec('tensorflow') is None)"],
                                      capture_output=True, text=True).stdout.strip()
            check = f"`detserve detect --help` exit {result.returncode}; tensorflow absent: {imported}"
        return {"what": label, "seconds": seconds, "megabytes": (after - before) / 1e6, "packages": packages,
                "check": check}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per case (median reported)")
    parser.add_argument("--install", action="store_true", help="also measure installing detserve-client")
    parser.add_argument("--with-tensorflow-serving-api", action="store_true",
                        help="also install tensorflow-serving-api in a fresh venv (~600 MB download)")
    parser.add_argument("--json", type=Path, help="write the numbers to this JSON file too")
    args = parser.parse_args(argv)

    rows = overhead_table(args.repeat)
    print_overhead(rows)
    results: dict = {"overhead": rows}
    if args.install:
        installs = [measure_install(str(REPO_ROOT / "client"), "detserve-client")]
        if args.with_tensorflow_serving_api:
            installs.append(measure_install("tensorflow-serving-api", "tensorflow-serving-api"))
        else:
            installs.append({"what": "tensorflow-serving-api (recorded)", **RECORDED_TFSA, "check": RECORDED_TFSA["note"]})
        print()
        print("Install into a fresh venv (pip install --no-cache-dir; site-packages growth)")
        print(f"{'what':<36} {'seconds':>8} {'MB':>9} {'packages':>9}")
        for row in installs:
            print(f"{row['what']:<36} {row['seconds']:>8.1f} {row['megabytes']:>9.1f} {row['packages']:>9}")
            if row.get("check"):
                print(f"  {row['check']}")
        results["install"] = installs
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
