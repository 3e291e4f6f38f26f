"""A bounded hypothesis fuzz of the REST body parser (issue 10): whatever the body, the server answers a JSON
4xx or 200, never a 5xx, and keeps answering.

The embedded server's real REST app runs in-process, around the tiny detector of serving_harness (the
fixtures of test_serving_rest_errors). Two generators, both reproducible (``derandomize=True``, no
example database): JSON documents (recursive values: nested lists of numbers of any size, NaN, strings,
``{"b64": ...}`` objects, objects with wrong keys, lists and objects nested up to 100,000 deep) and byte
mutations of good bodies (truncation, insertion, invalid UTF-8, trailing garbage). 150 + 150 examples: about
10 s on 2 idle cores.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import test_serving_rest_errors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_harness import encode_image

pytestmark = pytest.mark.timeout(300)
server, session = test_serving_rest_errors.server, test_serving_rest_errors.session  # its module fixtures

PREDICT = "/v1/models/detector:predict"
# Not "slow": its input is how many seconds the model busy-waits.
SIGNATURES = ["", "serving_default", "serving_bytes", "total", "nope"]
NAMES = ["images", "encoded_images", "x", "b64", "instances", "inputs", "signature_name"]
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_answered_without_a_5xx(session, server, body: bytes) -> None:
    reply = session.post(server.rest_url + PREDICT, data=body, timeout=60)
    shown = body[:300] + (b"..." if len(body) > 300 else b"")
    assert reply.status_code < 500, f"{reply.status_code} {reply.text[:500]} for {shown!r}"
    assert reply.headers["Content-Type"].startswith("application/json")
    assert set(reply.json()) in ({"error"}, {"predictions"}, {"outputs"}), reply.text[:500]


# -- JSON documents -----------------------------------------------------------------------------------------

PNG = base64.b64encode(encode_image(np.full((4, 4, 3), 200, np.uint8), "PNG")).decode()
B64 = st.one_of(
    st.just({"b64": PNG}),
    st.binary(max_size=24).map(lambda data: {"b64": base64.b64encode(data).decode()}),
    st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBPVP8L"]).flatmap(
        lambda magic: st.binary(max_size=32).map(lambda rest: {"b64": base64.b64encode(magic + rest).decode()})),
    st.text(max_size=12).map(lambda text: {"b64": text}),  # not base64
)
LEAVES = st.one_of(
    st.integers(0, 255), st.integers(), st.integers(-(2 ** 80), 2 ** 80), st.floats(), st.booleans(), st.none(),
    st.text(max_size=8), B64)
VALUES = st.recursive(LEAVES, lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=6)), children, max_size=3)), max_leaves=24)


@st.composite
def images(draw) -> list:
    """uint8 images [B, H, W, C] as lists: the right shape, or a dimension off."""
    batch, height, width = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    channels = draw(st.sampled_from([3, 3, 3, 1, 4]))
    pixel = st.lists(st.integers(0, 255), min_size=channels, max_size=channels)
    return draw(st.lists(st.lists(st.lists(pixel, min_size=width, max_size=width), min_size=height,
                                  max_size=height), min_size=batch, max_size=batch))


TENSORS = st.one_of(images(), VALUES, st.lists(B64, min_size=1, max_size=3),
                    st.lists(st.lists(st.floats(), min_size=2, max_size=2), min_size=1, max_size=3))
ROWS = st.one_of(images(), TENSORS, st.lists(st.dictionaries(st.sampled_from(NAMES), TENSORS, max_size=2),
                                             max_size=3))
COLUMNS = st.one_of(images(), TENSORS, st.dictionaries(st.sampled_from(NAMES), TENSORS, max_size=3))
OPTIONAL = {"signature_name": st.one_of(st.sampled_from(SIGNATURES), st.sampled_from(SIGNATURES),
                                        VALUES.filter(lambda name: name != "slow")), "extra": VALUES}
DOCUMENTS = st.one_of(
    st.fixed_dictionaries({"instances": ROWS}, optional=OPTIONAL),
    st.fixed_dictionaries({"instances": ROWS}, optional=OPTIONAL),
    st.fixed_dictionaries({"inputs": COLUMNS}, optional=OPTIONAL),
    st.fixed_dictionaries({"inputs": COLUMNS}, optional=OPTIONAL),
    st.fixed_dictionaries({}, optional={**OPTIONAL, "instances": ROWS, "inputs": COLUMNS}),
    VALUES,  # mostly not an object
)
# JSON texts json.dumps does not write: numbers Python's int() refuses, lone surrogates, overflowing exponents.
RAW_LEAVES = st.one_of(LEAVES.map(json.dumps), st.sampled_from(
    ["7" * 5000, "-" + "9" * 4301, '"\\ud800"', '{"b64": "\\udfff"}', "1e999", "-0", "-Infinity", '"x\\"]"']))


@st.composite
def json_bodies(draw) -> bytes:
    """A document's JSON, sometimes with one value replaced by a raw JSON text, nested in lists or objects up
    to 100,000 deep."""
    document = draw(DOCUMENTS)
    if not isinstance(document, dict) or draw(st.booleans()):
        return json.dumps(document).encode()
    depth = draw(st.one_of(st.integers(0, 80), st.integers(80, 1200), st.sampled_from([3000, 100_000])))
    opening, closing = draw(st.sampled_from([("[", "]"), ('{"images": ', "}"), ('[{"x": ', "}]")]))
    nested = opening * depth + draw(RAW_LEAVES) + closing * depth
    key = draw(st.sampled_from(sorted({*document, "extra"})))
    return json.dumps({**document, key: None}).replace(f'"{key}": null', f'"{key}": {nested}').encode()


@FUZZ
@given(body=json_bodies())
def test_no_json_document_gets_a_5xx(server, session, body):
    assert_answered_without_a_5xx(session, server, body)


# -- byte mutations -----------------------------------------------------------------------------------------

GOOD_BODIES = [json.dumps(document).encode() for document in (
    {"instances": [[[[1, 2, 3], [4, 5, 6]]]]},
    {"inputs": {"images": [[[[255, 0, 7]]]]}},
    {"signature_name": "serving_bytes", "instances": [{"b64": PNG}]},
    {"signature_name": "total", "inputs": [[1.5, float("nan")], [2, 1e300]]},
)]
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]


@st.composite
def mutated_bodies(draw) -> bytes:
    body = bytearray(draw(st.sampled_from(GOOD_BODIES)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        how = draw(st.sampled_from(["truncate", "insert", "invalid utf-8", "overwrite", "delete", "trailing"]))
        if how == "truncate":
            del body[at:]
        elif how == "insert":
            body[at:at] = draw(st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(
                [b"[", b"]", b"{", b"}", b'"', b",", b":", b"\\", b"NaN", b"-", b"e999", b"\\ud800", b"\0"])))
        elif how == "invalid utf-8":
            body[at:at] = draw(st.sampled_from(INVALID_UTF8))
        elif how == "overwrite" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif how == "delete":
            del body[at:at + draw(st.integers(1, 6))]
        else:
            body += draw(st.one_of(st.binary(max_size=16), st.sampled_from(GOOD_BODIES), st.just(b"[" * 2000)))
    return bytes(body)


@FUZZ
@given(body=mutated_bodies())
def test_no_mutated_body_gets_a_5xx(server, session, body):
    assert_answered_without_a_5xx(session, server, body)


def test_the_server_still_answers_after_the_fuzz(server, session):
    for body in GOOD_BODIES:
        reply = session.post(server.rest_url + PREDICT, data=body, timeout=60)
        assert reply.status_code == 200, reply.text
