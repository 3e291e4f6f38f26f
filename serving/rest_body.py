"""A REST request body as TF Serving reads it (``tensorflow_serving/util/json_tensor.cc``, ``ParseJson``).

rapidjson with ``kParseStopWhenDoneFlag``: the first JSON document is parsed and whatever follows it is
ignored; ``kParseNanAndInfFlag``: ``NaN``, ``Infinity`` and ``-Infinity`` are numbers. Python's parser
recurses once per nesting level where rapidjson iterates (``kParseIterativeFlag``), so a document nested
deeper than Python's recursion limit is refused, naming its depth (measured without recursion).
"""

from __future__ import annotations

import codecs
import json
import re
import sys

import numpy as np

from .errors import ServingError, invalid_argument

_DECODER = json.JSONDecoder()  # NaN, Infinity and -Infinity allowed by default
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace (RFC 8259), as rapidjson skips it
_ESCAPE = re.compile(rb"\\.", re.S)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def loads(body: bytes | str):
    """The first JSON document of a request body; what follows it is ignored, as TF Serving ignores it.

    A body that is not UTF-8 before the first document ends is refused (TF Serving does not check the
    encoding); a leading UTF-8 byte order mark is skipped.
    """
    if isinstance(body, str):
        return _first_document(body)
    skipped = len(codecs.BOM_UTF8) if body.startswith(codecs.BOM_UTF8) else 0
    try:
        text = body[skipped:].decode("utf-8")
    except UnicodeDecodeError as error:
        try:  # a document that ends before the bad byte is all there is to read
            return _first_document(body[skipped:skipped + error.start].decode("utf-8"))
        except ServingError:
            offset = skipped + error.start
            raise invalid_argument(
                f"JSON Parse error: the body is not valid UTF-8 at byte offset {offset} (0x{body[offset]:02x}: "
                f"{error.reason}); JSON text is UTF-8, binary data travels as {{\"b64\": ...}}") from None
    return _first_document(text)


def _first_document(text: str):
    start = _WHITESPACE.match(text).end()
    if start == len(text):
        raise invalid_argument("JSON Parse error: The document is empty")  # TF Serving's words
    try:
        return _DECODER.raw_decode(text, start)[0]
    except json.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: {error}") from None
    except RecursionError:  # Python's parser recurses once per level; TF Serving's rapidjson iterates
        raise invalid_argument(
            f"JSON Parse error: the document nests lists and objects {nesting_depth(text.encode(errors='replace'))} "
            f"deep, deeper than the server's JSON parser follows (about {sys.getrecursionlimit()} levels)") from None
    except ValueError:  # the only other failure: int() refuses very long digit strings
        raise invalid_argument(
            f"JSON Parse error: a number has more than {sys.get_int_max_str_digits()} digits, more than any "
            "tensor dtype holds") from None


def nesting_depth(text: bytes) -> int:
    """How deep the lists and objects of the first JSON document of ``text`` nest (strings skipped): O(n)
    in numpy, without recursion, for the message about a document too deep to parse."""
    if b"\\" in text:
        text = _ESCAPE.sub(b"", text)  # an escaped quote does not end a string
    outside_strings = b"".join(text.split(b'"')[::2])
    brackets = np.frombuffer(outside_strings.translate(None, _NOT_BRACKETS), np.int8)
    deepest, level, chunk = 0, 0, 1 << 22
    for start in range(0, len(brackets), chunk):
        # '[' and '{' have bit 1 set, ']' and '}' do not: +1 and -1
        levels = level + np.cumsum((brackets[start:start + chunk] & 2) - 1, dtype=np.int64)
        closed = np.flatnonzero(levels <= 0)  # the first document ends where its outermost bracket closes
        if closed.size:
            return max(deepest, int(levels[:closed[0] + 1].max()))
        deepest, level = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def may_hold_booleans(body: bytes | str) -> bool:
    """Whether a body can hold ``true`` or ``false`` (a cheap scan; numpy reads them as 1 and 0 in a numeric
    tensor, where TF Serving refuses them, so the tensors of such a body are checked for them)."""
    literals = ("true", "false") if isinstance(body, str) else (b"true", b"false")
    return any(literal in body for literal in literals)
