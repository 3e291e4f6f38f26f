"""Hostile and malformed requests against one real ``detserve serve`` process, as a table.

Each case sends one kind of bad input over gRPC (the official ``tensorflow_serving.apis`` stubs) or REST
(``requests``, or a raw socket where the HTTP framing itself is wrong) and asserts the status code, that the
message names the problem (a few keywords, the offending value or alias: not the whole text, so wording can
improve) and that the server is still healthy afterwards (the model AVAILABLE, a good Predict answered). The
table as a whole asserts that the server's resident memory (VmRSS) grows by less than 300 MB (``RSS_BOUND_MB``)
from before the first case to after the last: a tiny request must not cost the server gigabytes (issue 10,
defect 1).

The table holds 104 cases of 81 classes of bad input (a class is one kind of mistake; some are sent over both
transports). ``test_the_table_covers_the_classes_it_claims`` keeps that count honest.

The server runs with batching on (one batch thread, a 30 ms window, ``max_batch_size`` 8), a pixel limit of
``PIXEL_LIMIT`` and a message limit of ``MESSAGE_LIMIT``, so image bombs and oversized bodies stay small here.
The "window" cases send good and bad requests of the same signature and shape together, inside one batching
window: the bad one must be refused on its own and the good ones answered, as one batch.

Where TF Serving answers differently from what a naive server would, the case asserts TF Serving's behaviour
(issue 10, defect 4), and says so in its ``note``: an unknown label in a status request is ignored (all
versions), bytes after the JSON document are ignored.
"""

from __future__ import annotations

import base64
import concurrent.futures
import gzip
import io
import json
import socket
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import grpc
import numpy as np
import pytest
import requests
from serving_harness import (
    ServerProcess,
    cached_model,
    encode_image,
    install_version,
    memory_bytes,
    predict_request,
    reset_peak_memory,
)
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
    regression_pb2,
)

pytestmark = pytest.mark.timeout(60)

PIXEL_LIMIT = 100_000  # --max-image-pixels: a 400x300 image (120,000 pixels) is a bomb here
MESSAGE_LIMIT = 2 * 1024 * 1024  # --max-message-bytes
RSS_BOUND_MB = 300
MODEL = "detector"
PREDICT = f"/v1/models/{MODEL}:predict"
GOOD_VALUE = 51  # a good image's pixels: detection_scores[0] is 51 / 255 = 0.2

# One batch thread and a 30 ms window: requests sent together share a batch; max_batch_size 8 is the limit the
# oversized cases cross.
BATCHING = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 30000 }
num_batch_threads { value: 1 }
max_enqueued_batches { value: 4 }
"""


# -- the server ----------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """What came back: a grpc.StatusCode or an HTTP status (None: the connection closed without an answer),
    the error message (or the answer's text on success), and the good requests sent alongside (window cases)."""

    status: grpc.StatusCode | int | None
    message: str
    others: tuple[Reply, ...] = ()


@dataclass
class Server:
    process: ServerProcess
    prediction: prediction_service_pb2_grpc.PredictionServiceStub
    models: model_service_pb2_grpc.ModelServiceStub
    session: requests.Session
    pool: concurrent.futures.ThreadPoolExecutor

    @property
    def rest_url(self) -> str:
        return self.process.rest_url

    def rss_mb(self, field: str = "VmRSS") -> float:
        """The server process's resident set now (VmRSS) or its peak since the table started (VmHWM), in MB."""
        return memory_bytes(self.process.process.pid, field) / 2 ** 20


RSS: dict[str, float] = {}  # memory after each case (and "start"), for the table's bound


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "serving-models"
    repository = tmp_path_factory.mktemp("bad-input-repository")
    install_version(cached_model("tiny", cache, 1, warmup=None), repository / MODEL, 1)
    batching = repository / "batching.config"
    batching.write_text(BATCHING)
    process = ServerProcess(["--repository", str(repository), "--batching-parameters-file", str(batching),
                             "--max-image-pixels", str(PIXEL_LIMIT), "--max-message-bytes", str(MESSAGE_LIMIT),
                             "--file-system-poll-wait-seconds", "0", "--log-level", "warning"],
                            log_path=repository.parent / "bad-input-server.log")
    with process, grpc.insecure_channel(process.grpc_target) as channel, requests.Session() as session, \
            concurrent.futures.ThreadPoolExecutor(4) as pool:
        process.wait_ready()
        served = Server(process, prediction_service_pb2_grpc.PredictionServiceStub(channel),
                        model_service_pb2_grpc.ModelServiceStub(channel), session, pool)
        for send in (good_grpc(), good_rest(), good_rest_png()):  # first requests of each path, not counted
            assert send(served).status in (grpc.StatusCode.OK, 200)
        RSS["start"] = served.rss_mb()
        reset_peak_memory(process.process.pid)  # the peak over the table shows what a case freed at once
        yield served


def assert_healthy(server: Server, after: str) -> None:
    assert server.process.process.poll() is None, f"the server died after {after}:\n{server.process.log()[-3000:]}"
    status = server.session.get(f"{server.rest_url}/v1/models/{MODEL}", timeout=10)
    assert status.status_code == 200 and status.json()["model_version_status"][0]["state"] == "AVAILABLE", \
        f"after {after}: {status.status_code} {status.text[:300]}"
    reply = good_grpc()(server)
    assert reply.status == grpc.StatusCode.OK, f"a good Predict failed after {after}: {reply}"


# -- requests ------------------------------------------------------------------------------------------------

Send = Callable[[Server], Reply]


def tensor(dtype: int, shape, **fields) -> tensor_pb2.TensorProto:
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims), **fields)


def uint8_images(array: np.ndarray) -> tensor_pb2.TensorProto:
    return tensor(types_pb2.DT_UINT8, array.shape, tensor_content=np.ascontiguousarray(array, np.uint8).tobytes())


def strings(*values: bytes, shape=None) -> tensor_pb2.TensorProto:
    return tensor(types_pb2.DT_STRING, [len(values)] if shape is None else shape, string_val=list(values))


def good_images(rows: int = 1) -> np.ndarray:
    return np.full((rows, 4, 4, 3), GOOD_VALUE, np.uint8)


def rpc(method: str, request, service: str = "prediction") -> Send:
    def send(server: Server) -> Reply:
        stub = server.prediction if service == "prediction" else server.models
        try:
            response = getattr(stub, method)(request, timeout=15)
        except grpc.RpcError as error:
            return Reply(error.code(), error.details() or "")
        return Reply(grpc.StatusCode.OK, str(response))

    return send


def model_status(**spec) -> Send:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.CopyFrom(predict_request({}, **spec).model_spec)
    return rpc("GetModelStatus", request, "models")


def grpc_predict(inputs: dict[str, tensor_pb2.TensorProto], **spec) -> Send:
    return rpc("Predict", predict_request(inputs, **spec))


def good_grpc() -> Send:
    return grpc_predict({"images": uint8_images(good_images())})


def rest(method: str, path: str, body: bytes | str | dict | None = None) -> Send:
    data = json.dumps(body) if isinstance(body, dict) else body

    def send(server: Server) -> Reply:
        reply = server.session.request(method, server.rest_url + path, data=data, timeout=15,
                                       headers={"Content-Type": "application/json"})
        try:
            document = reply.json()
        except ValueError:
            return Reply(reply.status_code, reply.text)
        message = document["error"] if isinstance(document, dict) and "error" in document else reply.text
        return Reply(reply.status_code, message)

    return send


def rest_predict(body: bytes | str | dict, path: str = PREDICT) -> Send:
    return rest("POST", path, body)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def good_rest() -> Send:
    return rest_predict({"instances": good_images().tolist()})


def good_rest_png() -> Send:
    return rest_predict({"signature_name": "serving_bytes", "instances": [b64(GOOD_PNG)]})


def rest_bytes(*images: bytes) -> Send:
    return rest_predict({"signature_name": "serving_bytes", "instances": [b64(image) for image in images]})


def grpc_bytes(*images: bytes) -> Send:
    return grpc_predict({"encoded_images": strings(*images)}, signature="serving_bytes")


def raw_http(data: bytes, *, half_close: bool) -> Send:
    """Bytes written to the REST port as they are (HTTP framing errors), the first answer parsed."""

    def send(server: Server) -> Reply:
        answer = b""
        with socket.create_connection(("127.0.0.1", server.process.rest_port), timeout=10) as sock:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except TimeoutError:
                if not answer:
                    return Reply(None, "no answer within 10 s")
        if not answer:
            return Reply(None, "the connection closed without an answer")
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        body = body[:int(headers.get("content-length", len(body)))]
        return Reply(int(lines[0].split()[1]), body.decode("utf-8", "replace"))

    return send


def http_request(body: bytes, content_length: int | None = None, headers: str = "") -> bytes:
    length = len(body) if content_length is None else content_length
    return (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {length}\r\n\r\n").encode() + body


def chunked(body: bytes, chunk: int = 64 * 1024) -> bytes:
    """``body`` sent with Transfer-Encoding: chunked (no Content-Length for the server to check up front)."""
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + chunk]), body[i:i + chunk])
                      for i in range(0, len(body), chunk))
    return (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"


def batches_run(server: Server) -> int:
    """How many batches the server has run (its processed_batch_size histogram's count)."""
    text = server.session.get(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=15).text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith(":tensorflow:serving:batching_session:processed_batch_size_count"))


def window(bad: Send, *good: Send) -> Send:
    """``bad`` and ``good`` sent at the same moment: they land in one batching window (30 ms), and the good
    ones must run as one batch, without the bad one."""

    def send(server: Server) -> Reply:
        before = batches_run(server)
        futures = [server.pool.submit(s, server) for s in (bad, *good)]
        bad_reply, *good_replies = [future.result(timeout=60) for future in futures]
        batches = batches_run(server) - before
        assert batches == 1, f"the {len(good)} good requests ran as {batches} batches, not one"
        return replace(bad_reply, others=tuple(good_replies))

    return send


# -- images ----------------------------------------------------------------------------------------------------

BOMB = (400, 300)  # width, height: 120,000 pixels > PIXEL_LIMIT
CLAIM = (1200, 900)  # what the forged headers claim: 1,080,000 pixels
BOMB_WORDS = (("400x300", "300x400", "120000"), str(PIXEL_LIMIT))
CLAIM_WORDS = (("1200x900", "900x1200", "1080000"), str(PIXEL_LIMIT))


def encoded(format: str, size=BOMB, mode: str = "RGB", **options) -> bytes:
    """A constant image of ``size`` (tiny once compressed, except BMP)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, (GOOD_VALUE,) * len(mode)).save(buffer, format=format, **options)
    return buffer.getvalue()


GOOD_PNG = encode_image(np.full((4, 4, 3), GOOD_VALUE, np.uint8), "PNG")
GOOD_JPEG = encode_image(np.full((8, 8, 3), GOOD_VALUE, np.uint8), "JPEG")


def forged_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed, so the header reads as valid)."""
    data = bytearray(encoded("PNG", (1, 1)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def forged_jpeg(width: int, height: int) -> bytes:
    """An 8x8 JPEG whose SOF0 claims ``width`` x ``height``."""
    data = bytearray(encoded("JPEG", (8, 8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def forged_gif(width: int, height: int) -> bytes:
    """A 1x1 GIF on a ``width`` x ``height`` logical screen: TensorFlow decodes the whole screen."""
    data = bytearray(encoded("GIF", (1, 1)))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def forged_bmp(width: int, height: int) -> bytes:
    """A 1x1 BMP whose BITMAPINFOHEADER claims ``width`` x ``height``."""
    data = bytearray(encoded("BMP", (1, 1)))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


# -- the table -------------------------------------------------------------------------------------------------

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
ALWAYS_FORBIDDEN = ("object at 0x", "Traceback", "RecursionError", "ValueError")


@dataclass(frozen=True)
class Case:
    id: str
    klass: str  # the kind of mistake; cases over both transports share one
    send: Send
    status: grpc.StatusCode | int | tuple  # a tuple: any of these (None: closed without an answer)
    # Each entry must occur in the message (case-insensitive); a tuple entry is alternatives.
    expect: tuple[str | tuple[str, ...], ...] = ()
    forbid: tuple[str, ...] = ()
    note: str = ""


GZIP_BOMB = gzip.compress(b'{"instances": [' + b"0," * MESSAGE_LIMIT + b"0]}")  # 4 KB, 4 MB inflated


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


IMAGE_ROW = good_images()[0].tolist()  # one image as JSON rows: [4][4][3]


def with_pixel(value) -> list:
    """A good JSON image with one pixel value replaced (out of range, NaN, bool, string...)."""
    image = [[list(pixel) for pixel in row] for row in IMAGE_ROW]
    image[0][0][0] = value
    return [image]


CASES = [
    # -- tensors over gRPC -------------------------------------------------------------------------------------
    Case("grpc-wrong-dtype", "wrong dtype", grpc_predict({"images": tensor(
        types_pb2.DT_FLOAT, [1, 4, 4, 3], tensor_content=np.zeros((1, 4, 4, 3), np.float32).tobytes())}),
        INVALID, ("images", "uint8", "float")),
    Case("grpc-strings-for-uint8", "strings for a numeric input", grpc_predict({"images": strings(b"x")}),
         INVALID, ("images", "uint8", "string")),
    Case("grpc-wrong-rank", "wrong rank", grpc_predict({"images": uint8_images(np.zeros((4, 4, 3)))}),
         INVALID, ("images", "rank", "4")),
    Case("grpc-wrong-channels", "wrong fixed dimension", grpc_predict({"images": uint8_images(
        np.zeros((1, 4, 4, 5)))}), INVALID, ("images", "dimension 3")),
    Case("grpc-zero-height", "zero dims", grpc_predict({"images": tensor(types_pb2.DT_UINT8, [1, 0, 4, 3])}),
         INVALID, ("images", ("empty", "zero", "0 pixels", "0x4", "[1, 0, 4, 3]", "[1,0,4,3]")),
         note="a 0-pixel image is not an image: the tiny model answers NaN scores, a real detector fails in the graph"),
    Case("grpc-negative-dim", "negative dims", grpc_predict({"images": tensor(types_pb2.DT_UINT8, [1, -4, 4, 3],
                                                                              int_val=[7])}),
         INVALID, ("images", "negative")),
    Case("grpc-huge-declared-dims", "huge declared dims", grpc_predict({"images": tensor(
        types_pb2.DT_UINT8, [1, 20000, 40000, 3], int_val=[7])}), INVALID,
         ("images", ("20000x40000", "800000000"), str(PIXEL_LIMIT)),
         note="51 bytes on the wire declaring 2.4 GB: refused from the declared shape, before allocating"),
    Case("grpc-huge-declared-batch", "huge declared batch", grpc_predict({"images": tensor(
        types_pb2.DT_UINT8, [2 ** 40, 1, 1, 3], int_val=[7])}), INVALID,
         ("images", (str(2 ** 40), str(3 * 2 ** 40)))),
    Case("grpc-huge-declared-strings", "huge declared string tensor", grpc_predict(
        {"encoded_images": strings(GOOD_PNG, shape=[10 ** 7])}, signature="serving_bytes"), INVALID,
        ("encoded_images", str(10 ** 7)), note="TensorFlow repeats the last string_val to fill a declared shape"),
    Case("grpc-tensor-content-short", "tensor_content length mismatch", grpc_predict({"images": tensor(
        types_pb2.DT_UINT8, [1, 4, 4, 3], tensor_content=b"\0" * 10)}), INVALID, ("images", "10", "48")),
    Case("grpc-int-val-too-long", "int_val longer than the shape", grpc_predict({"images": tensor(
        types_pb2.DT_UINT8, [1, 2, 2, 3], int_val=[1] * 20)}), INVALID, ("images", "20", "12"),
         forbid=("negative values",)),
    Case("grpc-string-val-too-many", "string_val count mismatch", grpc_predict(
        {"encoded_images": strings(GOOD_PNG, GOOD_PNG, shape=[1])}, signature="serving_bytes"), INVALID,
        ("encoded_images", ("string_val", "values", "2"))),
    Case("grpc-no-dtype", "no dtype", grpc_predict({"images": tensor(types_pb2.DT_INVALID, [1])}), INVALID,
         ("images", ("dtype", "DT_INVALID"))),
    Case("grpc-unknown-rank", "unknown rank", grpc_predict({"images": tensor_pb2.TensorProto(
        dtype=types_pb2.DT_UINT8, tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True))}),
         INVALID, ("images", "rank")),
    Case("grpc-tensor-above-pixel-limit", "uint8 tensor above the pixel limit", grpc_predict({"images": uint8_images(
        np.zeros((1, BOMB[1], BOMB[0], 3), np.uint8))}), INVALID, ("images", *BOMB_WORDS)),
    Case("grpc-over-message-limit", "message over --max-message-bytes", grpc_predict({"images": uint8_images(
        np.zeros((1, 1000, 1000, 3), np.uint8))}), RESOURCE_EXHAUSTED, ("larger than max", str(MESSAGE_LIMIT))),
    # -- image bytes: a bomb of every format the graph decodes (tf.io.decode_image), and broken images -----------
    Case("grpc-jpeg-header-bomb", "JPEG pixel bomb", grpc_bytes(forged_jpeg(*CLAIM)), INVALID,
         ("encoded_images", *CLAIM_WORDS)),
    Case("rest-jpeg-bomb", "JPEG pixel bomb", rest_bytes(encoded("JPEG", quality=10)), 400,
         ("encoded_images", *BOMB_WORDS)),
    Case("grpc-png-header-bomb", "PNG pixel bomb", grpc_bytes(forged_png(*CLAIM)), INVALID,
         ("encoded_images", *CLAIM_WORDS)),
    Case("rest-png-bomb", "PNG pixel bomb", rest_bytes(encoded("PNG")), 400, ("encoded_images", *BOMB_WORDS)),
    Case("grpc-gif-screen-bomb", "GIF pixel bomb", grpc_bytes(forged_gif(*CLAIM)), INVALID,
         ("encoded_images", *CLAIM_WORDS), note="a 1x1 frame on a large logical screen: the graph decodes the screen"),
    Case("rest-gif-bomb", "GIF pixel bomb", rest_bytes(encoded("GIF")), 400, ("encoded_images", *BOMB_WORDS)),
    Case("grpc-bmp-header-bomb", "BMP pixel bomb", grpc_bytes(forged_bmp(*CLAIM)), INVALID,
         ("encoded_images", *CLAIM_WORDS)),
    Case("rest-bmp-bomb", "BMP pixel bomb", rest_bytes(encoded("BMP")), 400, ("encoded_images", *BOMB_WORDS)),
    Case("grpc-webp-lossless-bomb", "WebP (VP8L, lossless) pixel bomb", grpc_bytes(encoded("WEBP", lossless=True)),
         INVALID, ("encoded_images", *BOMB_WORDS), note="60 bytes for 120,000 pixels"),
    Case("rest-webp-lossy-bomb", "WebP (VP8, lossy) pixel bomb", rest_bytes(encoded("WEBP", quality=10)), 400,
         ("encoded_images", *BOMB_WORDS)),
    Case("rest-webp-extended-bomb", "WebP (VP8X, extended) pixel bomb", rest_bytes(encoded(
        "WEBP", mode="RGBA", quality=10, exif=b"Exif\0\0")), 400, ("encoded_images", *BOMB_WORDS)),
    Case("grpc-truncated-png", "truncated image", grpc_bytes(encoded("PNG", (40, 30))[:60]), INVALID,
         (("png",), ("truncat", "corrupt", "invalid", "incomplete"))),
    Case("rest-truncated-jpeg", "truncated image", rest_bytes(GOOD_JPEG[:len(GOOD_JPEG) // 2]), 400,
         (("jpeg", "jpg"), ("truncat", "corrupt", "invalid", "incomplete", "premature"))),
    Case("grpc-truncated-header", "truncated image header", grpc_bytes(GOOD_PNG[:12]), INVALID,
         ("encoded_images", ("png",), ("truncat", "corrupt", "invalid", "incomplete"))),
    Case("grpc-empty-image", "0-byte image", grpc_bytes(b""), INVALID,
         (("empty", "0 bytes", "0-byte", "unknown image"),)),
    Case("rest-empty-image", "0-byte image", rest_bytes(b""), 400, (("empty", "0 bytes", "0-byte", "unknown image"),)),
    Case("rest-corrupt-jpeg", "corrupt image of a known magic", rest_bytes(b"\xff\xd8\xff" + b"\x13" * 200), 400,
         ("encoded_images", ("jpeg", "jpg"), ("corrupt", "invalid", "cannot"))),
    Case("grpc-not-an-image", "bytes of no image format", grpc_bytes(b"just some text, not an image"), INVALID,
         (("unknown image", "image format", "not an image"),)),
    # -- REST framing and JSON ------------------------------------------------------------------------------------
    Case("rest-over-body-limit", "body over --max-message-bytes", rest_predict(
        b'{"instances": [' + b"0," * (MESSAGE_LIMIT // 2 + 10) + b"0]}"), 413,
         (str(MESSAGE_LIMIT), "max-message-bytes")),
    Case("rest-content-length-longer", "Content-Length longer than the body", raw_http(
        http_request(b'{"instances": [1]}', 1000), half_close=True), (400, None), (),
         note="the client stops sending: an answer or a close (RFC 9112 section 8), never a 500 or a hang"),
    Case("rest-content-length-shorter", "Content-Length shorter than the body", raw_http(
        http_request(json.dumps({"instances": good_images().tolist()}).encode(), 12), half_close=False), 400,
         (("json", "invalid method"),), note="the body is the first 12 bytes; the rest is a broken next request"),
    Case("rest-gzip-bomb", "gzip body inflating past --max-message-bytes", raw_http(http_request(
        GZIP_BOMB, headers="Content-Encoding: gzip\r\n"), half_close=True), 413,
         (str(MESSAGE_LIMIT), ("gzip", "inflat", "decompress", "more than")), forbid=(f"{len(GZIP_BOMB)} bytes",),
         note="the limit applies to the inflated body: the message must not call the 4 KB on the wire too large"),
    Case("rest-chunked-over-limit", "chunked body over --max-message-bytes", raw_http(chunked(
        b'{"instances": [' + b"0," * (MESSAGE_LIMIT // 2 + 10) + b"0]}"), half_close=True), 413,
         (str(MESSAGE_LIMIT),), forbid=("None bytes",), note="no Content-Length: the limit is checked as it reads"),
    Case("rest-huge-header", "HTTP header over the parser's limit", raw_http(http_request(
        b"{}", 2, headers="X-Junk: " + "j" * 100_000 + "\r\n"), half_close=False), (400, 431),
         (("8190", "header", "too long", "too large"),)),
    Case("rest-path-outside-v1", "path outside /v1", rest("GET", "/v2/models/detector"), 404, ("/v2/models",)),
    Case("rest-nesting-100000", "JSON nested 100,000 deep", rest_predict('{"instances": ' + nested(100_000) + "}"),
         400, (("nest", "depth", "deep"),)),
    Case("rest-nesting-900", "JSON nested 900 deep", rest_predict('{"instances": ' + nested(900) + "}"), 400,
         ("images", ("rank", "depth", "deep", "nest", "dimensions")), forbid=("ragged",)),
    Case("rest-invalid-utf8", "invalid UTF-8", rest_predict(b'{"instances": ["\xff\xfe"]}'), 400,
         (("utf-8", "utf8", "encoding"),)),
    Case("rest-invalid-json", "invalid JSON", rest_predict('{"instances": [1,}'), 400, ("json",)),
    Case("rest-empty-body", "empty body", rest_predict(b""), 400, ("json",)),
    Case("rest-trailing-bytes", "trailing bytes after the document", rest_predict(
        json.dumps({"instances": good_images().tolist()}) + "}garbage"), 200, ("predictions",),
         note="TF Serving stops at the end of the first document (issue 10, defect 4)"),
    Case("rest-not-an-object", "body not a JSON object", rest_predict("[1, 2]"), 400, ("object",)),
    Case("rest-signature-name-not-string", "signature_name not a string", rest_predict(
        {"signature_name": 5, "instances": [1]}), 400, ("signature_name", "string")),
    Case("rest-instances-not-list", "instances not a list", rest_predict({"instances": 5}), 400,
         ("instances", "list")),
    Case("rest-instances-and-inputs", "both instances and inputs", rest_predict(
        {"instances": [1], "inputs": [1]}), 400, ("instances", "inputs")),
    Case("rest-no-instances-or-inputs", "neither instances nor inputs", rest_predict({"signature": 1}), 400,
         ("instances", "inputs")),
    Case("rest-bad-base64", "bad base64", rest_predict(
        {"signature_name": "serving_bytes", "instances": [{"b64": "not base64!"}]}), 400,
         ("encoded_images", "base64")),
    Case("rest-b64-not-string", "b64 not a string", rest_predict(
        {"signature_name": "serving_bytes", "instances": [{"b64": 5}]}), 400, ("encoded_images", "b64", "string")),
    Case("rest-b64-for-uint8", "b64 for a numeric input", rest_predict({"instances": [b64(GOOD_PNG)]}), 400,
         ("images", "uint8")),
    Case("rest-number-for-string", "number for a string input", rest_predict(
        {"signature_name": "serving_bytes", "instances": [5]}), 400, ("encoded_images", "string")),
    Case("rest-uint8-300", "number out of range", rest_predict({"instances": with_pixel(300)}), 400,
         ("images", "300", "uint8")),
    Case("rest-int-above-2-64", "integer above 2^64", rest_predict({"instances": with_pixel(2 ** 64 + 1)}), 400,
         ("images", str(2 ** 64 + 1), "uint8")),
    Case("rest-nan-for-uint8", "NaN for uint8", rest_predict('{"instances": ' + json.dumps(with_pixel(0)).replace(
        "0", "NaN", 1) + "}"), 400, ("images", "uint8", ("nan", "decimal", "float"))),
    Case("rest-decimal-for-uint8", "decimal number for uint8", rest_predict({"instances": with_pixel(1.5)}), 400,
         ("images", "uint8", ("decimal", "1.5", "float"))),
    Case("rest-bool-for-uint8", "bool for uint8", rest_predict({"instances": with_pixel(True)}), 400,
         ("images", "uint8", ("bool", "true"))),
    Case("rest-string-for-uint8", "strings for a numeric input", rest_predict({"instances": with_pixel("7")}), 400,
         ("images", "uint8", "string")),
    Case("rest-null-for-uint8", "null for uint8", rest_predict({"instances": with_pixel(None)}), 400,
         ("images", "uint8", "null")),
    Case("rest-ragged", "ragged lists", rest_predict({"instances": [[[[1, 2, 3]], [[4, 5]]]]}), 400,
         ("images", ("ragged", "rectangular"))),
    Case("rest-mixed-row-objects", "mixed row objects", rest_predict(
        {"instances": [{"images": IMAGE_ROW}, IMAGE_ROW]}), 400, ("instances", ("mix", "object"))),
    Case("rest-rows-name-different-inputs", "rows naming different inputs", rest_predict(
        {"instances": [{"images": IMAGE_ROW}, {"imagez": IMAGE_ROW}]}), 400, ("imagez", "instance")),
    Case("rest-mixed-image-sizes", "mixed image sizes in one batch", rest_predict(
        {"instances": [IMAGE_ROW, np.zeros((5, 5, 3), np.uint8).tolist()]}), 400,
         ("images", ("ragged", "rectangular", "shape", "size"))),
    # -- names: model, version, label, signature, inputs, outputs ---------------------------------------------
    Case("grpc-unknown-model", "unknown model", grpc_predict({"images": uint8_images(good_images())}, model="nope"),
         NOT_FOUND, ("nope",)),
    Case("rest-unknown-model", "unknown model", rest_predict({"instances": [IMAGE_ROW]}, "/v1/models/nope:predict"),
         404, ("nope",)),
    Case("grpc-missing-model-name", "missing model name", grpc_predict(
        {"images": uint8_images(good_images())}, model=""), INVALID, ("model name",)),
    Case("grpc-unknown-version", "unknown version", grpc_predict({"images": uint8_images(good_images())},
                                                                  version=9), NOT_FOUND, ("detector", "9")),
    Case("rest-unknown-version", "unknown version", rest_predict(
        {"instances": [IMAGE_ROW]}, f"/v1/models/{MODEL}/versions/9:predict"), 404, ("detector", "9")),
    Case("grpc-status-unknown-version", "unknown version", model_status(version=9), NOT_FOUND, ("detector", "9")),
    Case("grpc-negative-version", "negative version", grpc_predict({"images": uint8_images(good_images())},
                                                                    version=-3), NOT_FOUND, ("-3",)),
    Case("rest-version-above-int64", "version above int64", rest("GET", f"/v1/models/{MODEL}/versions/"
                                                                 "99999999999999999999/metadata"), 400,
         ("99999999999999999999",)),
    Case("rest-version-not-a-number", "version not a number", rest("GET", f"/v1/models/{MODEL}/versions/abc"), 400,
         (("malformed", "abc"),)),
    Case("grpc-unknown-label", "unknown label", grpc_predict({"images": uint8_images(good_images())},
                                                              label="nope"), INVALID, ("label", "nope")),
    Case("rest-unknown-label", "unknown label", rest_predict(
        {"instances": [IMAGE_ROW]}, f"/v1/models/{MODEL}/labels/nope:predict"), 400, ("label", "nope")),
    Case("rest-metadata-unknown-label", "unknown label", rest("GET", f"/v1/models/{MODEL}/labels/nope/metadata"),
         400, ("label", "nope")),
    Case("grpc-status-unknown-label", "unknown label in status", model_status(label="nope"), OK, ("AVAILABLE",),
         note="TF Serving's GetModelStatus ignores the label and lists every version (issue 10, defect 4)"),
    Case("rest-status-unknown-label", "unknown label in status", rest("GET", f"/v1/models/{MODEL}/labels/nope"),
         200, ("AVAILABLE",), note="as TF Serving's REST status: the label is ignored"),
    Case("rest-version-and-label", "both version and label", rest_predict(
        {"instances": [IMAGE_ROW]}, f"/v1/models/{MODEL}/versions/1/labels/stable:predict"), 400,
         (("malformed", "both"),)),
    Case("grpc-unknown-signature", "unknown signature", grpc_predict({"images": uint8_images(good_images())},
                                                                      signature="nope"),
         FAILED_PRECONDITION, ("nope", "signature")),
    Case("rest-unknown-signature", "unknown signature", rest_predict(
        {"signature_name": "nope", "instances": [IMAGE_ROW]}), 400, ("nope", "signature")),
    Case("grpc-unknown-input", "unknown input alias", grpc_predict({"imagez": uint8_images(good_images())}),
         INVALID, ("imagez", "images")),
    Case("rest-unknown-input", "unknown input alias", rest_predict({"instances": [{"imagez": IMAGE_ROW}]}), 400,
         ("imagez", "images")),
    Case("grpc-missing-input", "missing inputs", grpc_predict({}), INVALID, ("images", "missing")),
    Case("rest-missing-input", "missing inputs", rest_predict({"inputs": {}}), 400, ("images", "missing")),
    Case("grpc-extra-input", "extra inputs", grpc_predict({"images": uint8_images(good_images()),
                                                           "foo": uint8_images(good_images())}),
         INVALID, ("foo", "extra")),
    Case("grpc-unknown-output-filter", "unknown output_filter alias", grpc_predict(
        {"images": uint8_images(good_images())}, output_filter=["nope_out"]), INVALID, ("nope_out", "output")),
    Case("grpc-duplicate-output-filter", "duplicate output_filter alias", grpc_predict(
        {"images": uint8_images(good_images())}, output_filter=["num_detections", "num_detections"]), INVALID,
         ("num_detections", "duplicate")),
    Case("grpc-metadata-bad-field", "unsupported metadata field", rpc("GetModelMetadata", (
        get_model_metadata_pb2.GetModelMetadataRequest(model_spec=predict_request({}).model_spec,
                                                       metadata_field=["nope_field"]))), INVALID, ("nope_field",)),
    # -- batches -------------------------------------------------------------------------------------------
    Case("grpc-empty-batch", "empty batch", grpc_predict({"images": uint8_images(np.zeros((0, 4, 4, 3)))}), INVALID,
         ("images", "empty")),
    Case("rest-empty-instances", "empty batch", rest_predict({"instances": []}), 400, ("instances", "empty")),
    Case("grpc-oversized-batch", "oversized batch", grpc_predict({"images": uint8_images(good_images(9))}),
         INVALID, ("9", "maximum", "8")),
    Case("rest-oversized-batch", "oversized batch", rest_predict({"instances": good_images(9).tolist()}), 400,
         ("9", "maximum", "8")),
    Case("window-grpc-dtype", "good and bad requests in one batching window", window(
        grpc_predict({"images": tensor(types_pb2.DT_INT32, [1, 4, 4, 3], int_val=[GOOD_VALUE])}),
        good_grpc(), good_grpc(), good_rest()), INVALID, ("images", "uint8", "int32")),
    Case("window-rest-webp-bomb", "good and bad requests in one batching window", window(
        rest_bytes(encoded("WEBP", lossless=True)), good_rest_png(), grpc_bytes(GOOD_PNG), good_rest_png()), 400,
         ("encoded_images", *BOMB_WORDS)),
    # -- unimplemented APIs --------------------------------------------------------------------------------------
    Case("grpc-classify", "Classify/Regress", rpc("Classify", classification_pb2.ClassificationRequest(
        model_spec=predict_request({}).model_spec)), UNIMPLEMENTED, ("classify", "predict")),
    Case("grpc-regress", "Classify/Regress", rpc("Regress", regression_pb2.RegressionRequest(
        model_spec=predict_request({}).model_spec)), UNIMPLEMENTED, ("regress", "predict")),
    Case("grpc-multi-inference", "Classify/Regress", rpc("MultiInference", inference_pb2.MultiInferenceRequest()),
         UNIMPLEMENTED, ("multiinference",)),
    Case("rest-classify", "Classify/Regress", rest_predict({"examples": []}, f"/v1/models/{MODEL}:classify"), 501,
         ("classify", "predict")),
    Case("rest-regress", "Classify/Regress", rest_predict({"examples": []}, f"/v1/models/{MODEL}:regress"), 501,
         ("regress", "predict")),
    Case("rest-wrong-method", "wrong HTTP method", rest("PUT", PREDICT, {"instances": [IMAGE_ROW]}), 400,
         ("malformed", "PUT")),
]

def message_contains(message: str, expect) -> list:
    low = message.lower()
    missing = []
    for entry in expect:
        options = (entry,) if isinstance(entry, str) else entry
        if not any(option.lower() in low for option in options):
            missing.append(options)
    return missing


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(server, case: Case):
    try:
        reply = case.send(server)
        accepted = case.status if isinstance(case.status, tuple) else (case.status,)
        assert reply.status in accepted, f"{case.id}: {reply.status} {reply.message[:400]!r}"
        missing = message_contains(reply.message, case.expect)
        assert not missing, f"{case.id}: {missing} not in {reply.message[:400]!r}"
        forbidden = [word for word in (*ALWAYS_FORBIDDEN, *case.forbid) if word.lower() in reply.message.lower()]
        assert not forbidden or case.status in (OK, 200), f"{case.id}: {forbidden} in {reply.message[:400]!r}"
        for other in reply.others:  # the good requests of the same batching window
            assert other.status in (OK, 200), f"{case.id}: a good request in the window failed: {other}"
    finally:
        RSS[case.id] = server.rss_mb()
        assert_healthy(server, case.id)


def test_memory_stays_bounded_over_the_table(server):
    """After every case: the server grew by less than RSS_BOUND_MB (runs after the table, in file order)."""
    if len(RSS) < len(CASES) // 2:
        pytest.skip("the table did not run in this session")
    end = server.rss_mb()
    keys = list(RSS)
    growth = {case: RSS[case] - RSS[previous] for previous, case in zip(keys, keys[1:], strict=False)}
    worst = sorted(growth.items(), key=lambda item: -item[1])[:5]
    print(f"server RSS {RSS['start']:.0f} MB before the table, {end:.0f} MB after it")
    assert end - RSS["start"] < RSS_BOUND_MB, (
        f"RSS {RSS['start']:.0f} -> {end:.0f} MB over the table; largest steps: "
        + ", ".join(f"{case} +{mb:.0f} MB" for case, mb in worst))
    peak = server.rss_mb("VmHWM")  # an allocation freed before the next case would not show in VmRSS
    print(f"server peak RSS over the table {peak:.0f} MB")
    assert peak - RSS["start"] < RSS_BOUND_MB, f"peak RSS {peak:.0f} MB over the table, {RSS['start']:.0f} MB before it"


def test_the_table_covers_the_classes_it_claims():
    classes = {case.klass for case in CASES}
    assert len({case.id for case in CASES}) == len(CASES)
    assert len(classes) >= 40
    assert f"{len(CASES)} cases of {len(classes)} classes" in __doc__
