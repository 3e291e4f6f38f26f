"""The embedded server under requests that declare more than they send (issue 10, defect 1): shapes checked from
the TensorProto header before anything is allocated, short typed fields bounded, every image format TensorFlow's
decode_image reads checked from its header, corrupt headers named without a Python repr, and large requests
decoded off the event loop. In-process: the data plane on the tiny models, requests built as gRPC sends them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import io
import struct
import threading
import zlib

import numpy as np
import pytest
from serving_harness import cached_model, encode_image, install_version, memory_bytes, reset_peak_memory
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from detserve.serving.codec import predict_call
from detserve.serving.config import single_model_config
from detserve.serving.errors import Code, ServingError
from detserve.serving.manager import ModelManager
from detserve.serving.predict import DataPlane, Limits
from detserve.serving.tensors import make_tensor_proto

MAX_PIXELS = 64 * 64
MAX_TENSOR_BYTES = 1 << 20
# A lossless WebP of a constant 16383x16383 image, as PIL writes it: 38 bytes that decode to 268 million pixels.
WEBP_BOMB = bytes.fromhex("524946461e00000057454250565038 4c110000002ffebfff0f07d0831ef4a0ff8188e87f0000".replace(" ", ""))


@pytest.fixture(scope="module")
def planes(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "serving-models"
    repo = tmp_path_factory.mktemp("limits-repository")
    executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="limits")
    managers, result = [], {}
    for name, kind in (("detector", "tiny"), ("three_inputs", "three_inputs")):
        install_version(cached_model(kind, cache, 1, warmup=None), repo / name, 1)
        manager = ModelManager(single_model_config(name, str(repo / name)), poll_seconds=0)
        manager.start()
        managers.append(manager)
        result[name] = DataPlane(manager, executor, limits=Limits(MAX_PIXELS, MAX_TENSOR_BYTES))
    yield result
    for manager in managers:
        manager.stop()
    executor.shutdown()


def request(inputs: dict, signature: str = "", model: str = "detector") -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = model
    message.model_spec.signature_name = signature
    for alias, value in inputs.items():
        message.inputs[alias].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto) else make_tensor_proto(value))
    return message


def typed(dtype: int, shape, **fields) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def predict(plane: DataPlane, message: predict_pb2.PredictRequest):
    return asyncio.run(plane.predict(predict_call(message, plane.limits.max_message_bytes)))


def refused(plane: DataPlane, message: predict_pb2.PredictRequest) -> str:
    with pytest.raises(ServingError) as error:
        predict(plane, message)
    assert error.value.code == Code.INVALID_ARGUMENT, error.value.message
    assert "object at 0x" not in error.value.message
    return error.value.message


# ------------------------------------------------------------------------------------------------------------
# Declared shapes and short typed fields


def test_a_51_byte_request_declaring_2_4_gb_is_refused_from_its_header(planes):
    bomb = request({"images": typed(types_pb2.DT_UINT8, [1, 20000, 40000, 3], int_val=[7])})
    assert bomb.ByteSize() < 64
    reset_peak_memory()  # a peak must show
    before, peak_before = memory_bytes(), memory_bytes(field="VmHWM")
    assert peak_before - before < 200 * 1024 * 1024
    message = refused(planes["detector"], bomb)
    # The peak, not only what is resident afterwards: freed at once, a 2.4 GB array would not show in VmRSS.
    assert memory_bytes(field="VmHWM") - before < 200 * 1024 * 1024
    assert f"input 'images': 20000x40000 images (800000000 pixels) exceed the server's limit of {MAX_PIXELS}" in message


def test_a_short_typed_field_is_filled_only_within_the_tensor_bound(planes):
    plane = planes["detector"]
    # TensorFlow's rule: the last value repeats (here 7 everywhere: the tiny model's score is the mean / 255).
    answer = predict(plane, request({"images": typed(types_pb2.DT_UINT8, [2, 8, 8, 3], int_val=[7])}))
    assert answer.outputs["detection_scores"][:, 0].tolist() == pytest.approx([7 / 255] * 2)
    # 2,000 images of 64x64: within the pixel limit each, 24 MiB in all, from one value.
    before = memory_bytes()
    message = refused(plane, request({"images": typed(types_pb2.DT_UINT8, [2000, 64, 64, 3], int_val=[7])}))
    assert memory_bytes() - before < 200 * 1024 * 1024
    assert message == ("tensor parsing error: images: int_val has 1 values for shape [2000, 64, 64, 3] (24576000 "
                       "elements): filling it with the last value would make 24576000 bytes of uint8, above the "
                       f"server's limit of {MAX_TENSOR_BYTES} bytes per tensor (--max-message-bytes)")


def test_images_of_zero_pixels_are_refused_from_the_header(planes):
    message = refused(planes["detector"], request({"images": typed(types_pb2.DT_UINT8, [1, 0, 4, 3])}))
    assert message == ("input 'images': 0x4 images (0 pixels, shape [1, 0, 4, 3]) are empty: send images of at least "
                       "1x1 pixels")


def test_more_values_than_the_shape_holds_are_named(planes):
    message = refused(planes["detector"], request({"images": typed(types_pb2.DT_UINT8, [1, 1, 1, 3],
                                                                   int_val=[1, 2, 3, 4, 5])}))
    assert message == "tensor parsing error: images: int_val has 5 values but shape [1, 1, 1, 3] has 3 elements"


def test_string_tensors_need_one_string_per_element(planes):
    jpeg = encode_image(np.zeros((8, 8, 3), np.uint8))
    message = refused(planes["detector"], request(
        {"encoded_images": typed(types_pb2.DT_STRING, [3], string_val=[jpeg])}, "serving_bytes"))
    assert message == ("tensor parsing error: encoded_images: string_val has 1 strings but shape [3] has 3 elements: "
                       "send one string per element")


# ------------------------------------------------------------------------------------------------------------
# Encoded images: every format decode_image reads, checked from the header


def _image(fmt: str, size: int = 100) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(_image("JPEG", 8))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_claiming(width: int, height: int) -> bytes:
    data = bytearray(_image("PNG", 8))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # a valid IHDR, so PIL reads it too
    return bytes(data)


def _gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(_image("GIF", 8))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _animated_gif(frames: int, size: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    images = [Image.fromarray(np.full((size, size, 3), 25 * index, np.uint8)) for index in range(frames)]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def _bmp_header(width: int, height: int) -> bytes:
    """A BITMAPINFOHEADER for a 24-bit image and no pixel data (only the header is read)."""
    return b"BM" + struct.pack("<IHHIIiiHH", 54 + width * height * 3, 0, 0, 54, 40, width, height, 1, 24) + b"\0" * 24


BOMBS = {
    "JPEG": (_jpeg_claiming(60000, 60000), "a 60000x60000 image (3600000000 pixels)"),
    "PNG": (_png_claiming(100000, 100000), "a 100000x100000 image (10000000000 pixels)"),
    "GIF": (_gif_claiming(65535, 65535), "a 65535x65535 image (4294836225 pixels)"),
    "BMP": (_bmp_header(5000, 5000), "a 5000x5000 image (25000000 pixels)"),
    "WEBP": (WEBP_BOMB, "a 16383x16383 image (268402689 pixels)"),
    # No DIB header size, but the length TensorFlow's BMP decoder wants: it would decode it.
    "BMP, bare": (_bmp_header(100, 100)[:14] + b"\0" * 4 + _bmp_header(100, 100)[18:] + b"\0" * 30000,
                  "a 100x100 image (10000 pixels)"),
    # Each frame within the limit, but giflib decodes all nine (1 byte per pixel: 9 x 1600 / 3 RGB pixels).
    "GIF, animated": (_animated_gif(9, 40), "a 40x40 GIF of 9 frames (4800 pixels)"),
    # A stuffed zero (FF 00) before a fake SOF hidden in an APP1 segment: libjpeg skips both, reads the real one.
    "JPEG, hidden SOF": (_image("JPEG", 80)[:2] + bytes.fromhex("ff000006" "ffe1000d" "ffc0000b080010001001" "00")
                         + _image("JPEG", 80)[2:], "a 80x80 image (6400 pixels)"),
    "BMP, complete": (_image("BMP"), "a 100x100 image (10000 pixels)"),
    "WEBP, complete": (_image("WEBP"), "a 100x100 image (10000 pixels)"),
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_pixel_bombs_of_every_decoded_format_are_refused_from_the_header(planes, case):
    data, size = BOMBS[case]
    message = refused(planes["detector"], request({"encoded_images": np.array([b"", data], dtype=object)},
                                                  "serving_bytes"))
    assert message == f"input 'encoded_images'[1]: {size} exceeds the server's limit of {MAX_PIXELS} pixels per image"


CORRUPT = {
    "JPEG": (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "JPEG header unreadable (44 bytes): marker segment length 0 at byte 4"),
    "PNG": (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG header unreadable (10 bytes): truncated: the IHDR chunk needs 24 bytes"),
    "GIF": (b"GIF89a\x08\x00", "GIF header unreadable (8 bytes): truncated: the logical screen descriptor needs 13 "
                              "bytes"),
    "BMP": (_bmp_header(8, 8)[:24], "BMP header unreadable (24 bytes): truncated: the header needs 32 bytes"),
    "WEBP": (WEBP_BOMB[:22], "WEBP header unreadable (22 bytes): truncated: the VP8L header needs 25 bytes"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_headers_are_named_by_format(planes, case):
    data, reason = CORRUPT[case]
    message = refused(planes["detector"], request({"encoded_images": np.array([data], dtype=object)},
                                                  "serving_bytes"))
    assert message == f"input 'encoded_images'[0]: corrupt image bytes: {reason}"


def test_jpeg_xl_is_refused_as_its_size_cannot_be_checked(planes):
    message = refused(planes["detector"], request({"encoded_images": np.array([b"\xff\x0a" + b"\0" * 20],
                                                                              dtype=object)}, "serving_bytes"))
    assert message == ("input 'encoded_images'[0]: JPEG XL images are not accepted: the server cannot read their "
                       f"size to check it against its limit of {MAX_PIXELS} pixels per image")


def test_images_within_the_limit_and_strings_that_are_not_images_pass(planes):
    images = np.array([_image(fmt, 32) for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP")], dtype=object)
    answer = predict(planes["detector"], request({"encoded_images": images}, "serving_bytes"))
    assert answer.outputs["detection_scores"][:, 0] == pytest.approx([90 / 255] * 5, abs=0.02)
    # What libjpeg and giflib accept, the header check accepts: stray bytes before a JPEG marker (a warning), a
    # GIF without its trailer; and an animation whose frames' rasters stay within the limit.
    jpeg, gif = _image("JPEG", 32), _image("GIF", 32)
    tolerated = np.array([jpeg[:20] + b"abc" + jpeg[20:], gif[:-1], _animated_gif(3, 32)], dtype=object)
    answer = predict(planes["detector"], request({"encoded_images": tolerated}, "serving_bytes"))
    assert answer.outputs["detection_scores"].shape[0] == 3
    # A text input starting with an image magic ("BM", "GIF8" needs more) is not taken for an image.
    inputs = {"tag": np.array([b"BMW 3 series", b"RIFF"], dtype=object), "signal": np.zeros((2, 5), np.float32),
              "sensor": np.zeros((2, 2, 2), np.float32)}
    answer = predict(planes["three_inputs"], request(inputs, model="three_inputs"))
    assert answer.outputs["tag_upper"].tolist() == [b"BMW 3 SERIES", b"RIFF"]


# ------------------------------------------------------------------------------------------------------------
# Off the event loop


def test_large_requests_are_decoded_off_the_event_loop(planes):
    """The decode blocks until the test, running on the event loop, releases it: had it run on the loop, the
    loop could not get there and the decode would time out."""
    plane = planes["detector"]
    assert predict_call(request({"images": np.zeros((1, 8, 8, 3), np.uint8)})).small
    bomb = request({"images": typed(types_pb2.DT_UINT8, [1, 20000, 40000, 3], int_val=[7])})
    assert not predict_call(bomb).small  # declared size, not bytes sent
    assert not predict_call(request({"images": typed(types_pb2.DT_UINT8, [1, 256, 256, 3],
                                                      int_val=[7] * 256 * 256 * 3)})).small  # 192 KiB, value by value
    call = predict_call(request({"images": np.zeros((200, 64, 64, 3), np.uint8)}))  # 2.3 MiB: over SMALL_CONTENT_BYTES
    assert not call.small
    entered, released, outcome = threading.Event(), threading.Event(), {}

    def blocking_decode(signature):
        entered.set()
        outcome["released"] = released.wait(10)
        return call.decode(signature)

    async def main():
        task = asyncio.create_task(plane.predict(dataclasses.replace(call, decode=blocking_decode)))
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        assert plane.status(call.model)[0].version == 1  # the loop answers a status call meanwhile
        released.set()
        return await task

    prediction = asyncio.run(main())
    assert outcome["released"] is True
    assert prediction.outputs["detection_scores"][:, 0].tolist() == [0.0] * 200
