"""REST bodies and URLs that used to answer 500 or an unhelpful 400 (issue 10, items 2 and 4): each answers
TF Serving's status with a message that names the input, the value and the limit.

The embedded server's real REST app runs in-process (fake_serving.TestServer) around the tiny detector of
serving_harness: ``serving_default`` (uint8 ``images`` [-1,-1,-1,3]), ``serving_bytes`` (string
``encoded_images`` [-1]) and ``total`` (float ``x`` [-1,2], summed).
"""

from __future__ import annotations

import asyncio
import gzip
import json

import numpy as np
import pytest
import requests
from aiohttp.test_utils import TestClient
from aiohttp.test_utils import TestServer as AioTestServer
from fake_serving import TestServer, servable_for
from serving_harness import cached_model, install_version
from tensorflow.core.framework import types_pb2

from detserve.serving import rest_body, rest_json
from detserve.serving.errors import ServingError
from detserve.serving.metrics import ServingMetrics
from detserve.serving.rest import RestApi
from detserve.serving.servable import TensorSpec

pytestmark = pytest.mark.timeout(300)

PIXEL = [[[[1, 2, 3]]]]  # one 1x1 image, as rows
INT64_MAX = 2 ** 63 - 1


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    version_dir = base / "rest-errors-repository" / "detector" / "1"
    if not version_dir.exists():  # shared with test_serving_fuzz: one loaded version per session
        install_version(cached_model("tiny", base / "serving-models", 1, warmup=None), version_dir.parent, 1)
    test_server = TestServer(servable_for(version_dir)).start()
    yield test_server
    test_server.stop()


@pytest.fixture(scope="module")
def session(server):
    with requests.Session() as session:
        yield session


def post(session, server, body, path: str = "/v1/models/detector:predict") -> requests.Response:
    data = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return session.post(server.rest_url + path, data=data, timeout=60)


def error_of(reply: requests.Response, status: int = 400) -> str:
    assert reply.status_code == status, reply.text
    assert set(reply.json()) == {"error"}
    return reply.json()["error"]


# -- versions in the URL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["99999999999999999999", str(INT64_MAX + 1), "9" * 5000])
@pytest.mark.parametrize("method, suffix", [("GET", "/metadata"), ("GET", ""), ("POST", ":predict")])
def test_a_version_beyond_int64_is_refused_as_tf_serving_refuses_it(server, session, version, method, suffix):
    reply = session.request(method, f"{server.rest_url}/v1/models/detector/versions/{version}{suffix}",
                            data=json.dumps({"instances": PIXEL}) if method == "POST" else None, timeout=60)
    # tensorflow_serving/model_servers/http_rest_api_util.cc: SimpleAtoi into an int64
    assert error_of(reply) == f"Failed to convert version: {version} to numeric."


def test_the_largest_int64_version_is_a_version_like_any_other(server, session):
    reply = session.get(f"{server.rest_url}/v1/models/detector/versions/{INT64_MAX}/metadata", timeout=60)
    assert "Servable not found for request: Specific(detector, 9223372036854775807)" in error_of(reply, 404)


@pytest.mark.parametrize("method, suffix", [("GET", "/metadata"), ("GET", ""), ("POST", ":predict")])
def test_a_negative_version_is_a_malformed_path_as_tf_serving_s_regex_takes_digits_only(server, session, method,
                                                                                         suffix):
    reply = session.request(method, f"{server.rest_url}/v1/models/detector/versions/-1{suffix}", timeout=60)
    assert error_of(reply) == f"Malformed request: {method} /v1/models/detector/versions/-1{suffix}"


# -- nesting ------------------------------------------------------------------------------------------------


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def test_json_nested_100000_deep_is_a_400_naming_the_depth_and_the_parser_s_limit(server, session):
    error = error_of(post(session, server, '{"instances": ' + nested(100_000) + "}"))
    assert "JSON Parse error" in error and "100001 deep" in error and "levels" in error


def test_the_depth_of_a_deep_document_skips_strings_and_counts_objects(server, session):
    strings = '"signature_name": "a\\"[[[{{", "pad": ["]]]", "\\\\"]'  # brackets and escapes inside strings
    body = "{" + strings + ', "instances": ' + '{"a": ' * 3000 + nested(3000) + "}" * 3000 + "}"
    assert "6001 deep" in error_of(post(session, server, body))  # the body, 3000 objects, 3000 lists


def test_nesting_depth_measures_the_first_document_only():
    assert rest_body.nesting_depth(b'{"a": [[1]], "b": "[[[["} [[[[[[[[[[') == 3
    assert rest_body.nesting_depth(b'[[["\\"]]]]]"]]]') == 3
    assert rest_body.nesting_depth(b"[" * 5_000_000) == 5_000_000  # in chunks, without recursion


def test_lists_nested_900_deep_name_the_input_its_rank_and_the_limit_instead_of_ragged(server, session):
    error = error_of(post(session, server, '{"instances": ' + nested(900) + "}"))
    assert error == ("input 'images': the lists nest 900 deep, more than the 64 dimensions a tensor can have "
                     "(its signature declares rank 4)")
    strings = error_of(post(session, server, '{"signature_name": "serving_bytes", "instances": '
                            + nested(900, '"x"') + "}"))
    assert "input 'encoded_images': the lists nest 900 deep" in strings and "rank 1" in strings


def test_a_tensor_may_nest_64_deep_but_not_65(server, session):
    assert "must have rank 4" in error_of(post(session, server, '{"inputs": ' + nested(64) + "}"))
    assert "nest 65 deep, more than the 64" in error_of(post(session, server, '{"inputs": ' + nested(65) + "}"))


def test_a_deeper_branch_after_an_empty_first_element_is_ragged_not_a_crash(server, session):
    body = '{"signature_name": "serving_bytes", "instances": [[], ' + nested(900, '"x"') + "]}"
    assert "ragged" in error_of(post(session, server, body))


# -- numbers ------------------------------------------------------------------------------------------------


def with_pixel(value: str) -> str:
    return '{"instances": [[[[1, 2, 3]], [[4, 5, ' + value + "]]]]}"


@pytest.mark.parametrize("value, message", [
    ("123456789012345678901234567890", "input 'images': value 123456789012345678901234567890 at [0][1][0][2] is out "
                                       "of range for uint8 [0, 255]"),
    ("-18446744073709551617", "value -18446744073709551617 at [0][1][0][2] is out of range for uint8 [0, 255]"),
    ("300", "value 300 at [0][1][0][2] is out of range for uint8 [0, 255]"),
    ("1.5", "input 'images': JSON decimal numbers are not of expected type: uint8 (found 1.5 at [0][1][0][2])"),
    ("NaN", "JSON decimal numbers are not of expected type: uint8 (found NaN at [0][1][0][2])"),
    ("-Infinity", "(found -Infinity at [0][1][0][2])"),
    ("null", "input 'images': the values are not all numbers of expected type: uint8 (found null at [0][1][0][2])"),
    ('{"a": 1}', 'the values are not all numbers of expected type: uint8 (found {"a": ...} at [0][1][0][2])'),
    ('"7"', "input 'images' expects uint8 numbers, not strings or {\"b64\": ...} values (found \"7\" at "
            "[0][1][0][2]"),
    ("true", "input 'images': JSON true/false is not of expected type: uint8 (found true at [0][1][0][2])"),
])
def test_a_wrong_number_names_the_input_the_value_and_where_it_is(server, session, value, message):
    assert message in error_of(post(session, server, with_pixel(value)))


def test_a_number_of_more_digits_than_python_converts_is_a_400(server, session):
    error = error_of(post(session, server, with_pixel("7" * 5000)))
    assert "JSON Parse error: a number has more than 4300 digits" in error


def test_integers_of_any_size_are_numbers_for_a_float_input_as_in_tf_serving(server, session):
    body = {"signature_name": "total", "inputs": [[1, 123456789012345678901234567890], [2 ** 64, 0.5]]}
    reply = post(session, server, body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"] == pytest.approx(123456789012345678901234567890 + 2 ** 64 + 1.5, rel=1e-6)
    assert "is out of range for float" in error_of(post(session, server, {"signature_name": "total",
                                                                           "inputs": [[1, 10 ** 400]]}))


def test_nan_and_infinity_are_still_numbers_for_a_float_input(server, session):
    reply = post(session, server, '{"signature_name": "total", "inputs": [[NaN, 1], [Infinity, 2]]}')
    assert reply.status_code == 200 and reply.text == '{"outputs":NaN}'


def test_integer_dtypes_name_values_numpy_would_widen():
    int64 = TensorSpec("ids", types_pb2.DT_INT64, (None,))
    with pytest.raises(ServingError, match=r"value 9223372036854775808 at \[1\] is out of range for int64 "
                                           r"\[-9223372036854775808, 9223372036854775807\]"):
        rest_json.to_array([-1, 2 ** 63], "ids", int64)  # numpy makes these float64
    with pytest.raises(ServingError, match=r"value 18446744073709551617 at \[0\] is out of range for int64"):
        rest_json.to_array([2 ** 64 + 1], "ids", int64)
    uint64 = TensorSpec("ids", types_pb2.DT_UINT64, (None,))
    assert rest_json.to_array([0, 2 ** 64 - 1], "ids", uint64).tolist() == [0, 2 ** 64 - 1]
    assert rest_json.to_array([-(2 ** 63), INT64_MAX], "ids", int64).dtype == np.int64


def test_an_empty_list_is_not_called_a_list_of_decimal_numbers(server, session):
    assert "must have rank 4 (shape [-1,-1,-1,3]), got shape [0]" in error_of(post(session, server, {"inputs": []}))


# -- shapes and names ---------------------------------------------------------------------------------------


def test_ragged_lists_say_where_they_stop_being_rectangular(server, session):
    error = error_of(post(session, server, {"instances": [[[[1, 2, 3]]], [[[4, 5]]]]}))
    assert error == ("input 'images': the nested lists are not rectangular (ragged): [1][0][0] has 2 entries where "
                     "[0][0][0] has 3")
    error = error_of(post(session, server, {"instances": [[[[1, 2, 3]]], [[7]]]}))
    assert "[1][0][0] is a single value where [0][0][0] is a list of 3" in error
    error = error_of(post(session, server, {"instances": [[[[1, 2, 3]]], [[[4, 5, [6]]]]]}))
    assert "[1][0][0][2] is a list where [0][0][0][0] is a single value" in error


def test_an_unknown_input_name_is_named_before_its_value_is_read(server, session):
    error = error_of(post(session, server, {"inputs": {"image": [[1], [2, 3]]}}))
    assert error.startswith("input tensor alias not found in signature: image.")
    error = error_of(post(session, server, {"instances": [{"image": nested(900)}]}))
    assert error.startswith("input tensor alias not found in signature: image.")


def test_a_lone_surrogate_in_a_string_input_is_a_400(server, session):
    error = error_of(post(session, server, '{"signature_name": "serving_bytes", "instances": ["\\ud800"]}'))
    assert error.startswith("input 'encoded_images': string \"\\ud800\" holds a lone UTF-16 surrogate")


# -- the body -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trailer", [b"}garbage", b'{"instances": 5}', b"\n\xff\xfe not UTF-8", b"[" * 5000])
def test_bytes_after_the_first_document_are_ignored_as_tf_serving_ignores_them(server, session, trailer):
    reply = post(session, server, json.dumps({"instances": PIXEL}).encode() + trailer)
    assert reply.status_code == 200 and len(reply.json()["predictions"]) == 1, reply.text


@pytest.mark.parametrize("body", [b"", b" \r\n\t"])
def test_an_empty_body_gets_tf_serving_s_message(server, session, body):
    assert error_of(post(session, server, body)) == "JSON Parse error: The document is empty"


def test_invalid_utf8_inside_the_document_names_the_byte(server, session):
    error = error_of(post(session, server, b'{"signature_name": "serving_bytes", "instances": ["\xff\xfe"]}'))
    assert error.startswith("JSON Parse error: the body is not valid UTF-8 at byte offset 51 (0xff")


def test_a_byte_order_mark_is_skipped_and_offsets_still_count_it(server, session):
    assert post(session, server, b"\xef\xbb\xbf" + json.dumps({"instances": PIXEL}).encode()).status_code == 200
    assert "byte offset 5 (0xff" in error_of(post(session, server, b'\xef\xbb\xbf{"\xff": 1}'))


@pytest.mark.parametrize("body, message", [
    ("[1, 2]", "The request body must be a JSON object."),
    ('"instances"', "The request body must be a JSON object."),
    ('{"instances": 5}', "'instances' must be a JSON list with one entry per batch row"),
    ('{"inputs": 5, "instances": [5]}', "Not both 'instances' (row format) and 'inputs' (columnar format)"),
    ('{"signature_name": "serving_bytes", "instances": [{"b64": "not base64!"}]}',
     "input 'encoded_images': invalid base64 in a 'b64' value (\"not base64!\")"),
    ('{"signature_name": "serving_bytes", "instances": [{"b64": 5}]}',
     "input 'encoded_images': the 'b64' value must be a string, not 5"),
    ('{"instances": [1,}', "JSON Parse error: Expecting value"),
])
def test_other_malformed_bodies_keep_their_messages(server, session, body, message):
    assert message in error_of(post(session, server, body))


def post_to_a_1000_byte_limit(server, data, headers: dict | None = None) -> tuple[int, dict]:
    async def main() -> tuple[int, dict]:
        app = RestApi(server.servable, ServingMetrics(), None, None).app(1000)
        async with TestClient(AioTestServer(app)) as client:
            reply = await client.post("/v1/models/detector:predict", data=data, headers=headers)
            return reply.status, await reply.json()

    return asyncio.run(main())


def test_a_chunked_body_over_the_limit_names_the_limit_not_a_content_length(server):
    async def chunks():  # a generator body: chunked transfer encoding, no Content-Length
        for _ in range(4):
            yield b" " * 500

    assert post_to_a_1000_byte_limit(server, chunks()) == (413, {"error": (
        "Request body too large: more than 1000 bytes (chunked, without a Content-Length), the server's limit is "
        "1000 bytes (--max-message-bytes)")})


def test_a_compressed_body_over_the_limit_once_inflated_is_not_called_too_large_on_the_wire(server):
    bomb = gzip.compress(b" " * 100_000)
    assert len(bomb) < 1000
    assert post_to_a_1000_byte_limit(server, bomb, {"Content-Encoding": "gzip"}) == (413, {"error": (
        "Request body too large: more than 1000 bytes once gzip-decompressed, the server's limit is 1000 bytes "
        "(--max-message-bytes)")})


def test_the_server_still_answers_after_the_bad_requests(server, session):
    reply = post(session, server, {"instances": PIXEL})
    assert reply.status_code == 200 and reply.json()["predictions"][0]["num_detections"] == 1.0
