"""TF Serving's REST JSON <-> numpy (``tensorflow_serving/util/json_tensor.cc`` behaviour).

Requests: ``{"signature_name": ..., "instances": ...}`` (row format: a list with one entry per batch row, each an
object of named inputs, or a bare value when the signature has one input) or ``{"inputs": ...}`` (columnar: an
object of named tensors, or one bare tensor), never both. Values are converted to the dtype the signature
declares; binary strings travel as ``{"b64": "..."}``. Responses: ``{"predictions": ...}`` for row requests (a
list of per-row objects, or of bare values for a single output) and ``{"outputs": ...}`` for columnar ones (an
object, or the bare tensor for a single output). Output names ending in ``_bytes`` are written as
``{"b64": ...}``, as are strings that are not valid UTF-8 (TF Serving would emit invalid JSON for those).
``NaN`` and ``Infinity`` are accepted and written, as TF Serving does.

The document comes from ``rest_body.loads``. Every mistake is an INVALID_ARGUMENT naming the input, the value
and where it is (``[0][2][1]``: its index path in the tensor's nested lists).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import types_pb2

from .errors import ServingError, invalid_argument
from .servable import TensorSpec
from .tensors import NUMPY_DTYPES, short_dtype_name

ROW, COLUMNAR = "row", "columnar"
# The most dimensions a JSON tensor may nest: numpy's limit (NPY_MAXDIMS); a detector's input has rank 4.
MAX_TENSOR_RANK = 64


@dataclass
class JsonPredictRequest:
    signature_name: str
    inputs: dict[str, np.ndarray]
    format: str  # ROW | COLUMNAR


def signature_name_of(document) -> str:
    if not isinstance(document, dict):
        raise invalid_argument("The request body must be a JSON object.")
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument("'signature_name' key must be a string value.")
    return name


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def request_format(document) -> str:
    """ROW for ``{"instances": ...}``, COLUMNAR for ``{"inputs": ...}`` (exactly one of them)."""
    has_rows, has_columns = "instances" in document, "inputs" in document
    if has_rows and has_columns:
        raise invalid_argument("Not both 'instances' (row format) and 'inputs' (columnar format) can be specified "
                               "in one request")
    if not has_rows and not has_columns:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    return ROW if has_rows else COLUMNAR


def input_names(document) -> frozenset[str] | None:
    """The input aliases a request names (its first object of named inputs), before any value is read, so the
    names are checked against the signature first, as TF Serving does; None for bare values."""
    if not isinstance(document, dict) or ("instances" in document) == ("inputs" in document):
        return None  # request_format names the mistake
    rows = document.get("instances")
    first = (rows[0] if rows else None) if isinstance(rows, list) else document.get("inputs")
    return frozenset(first) if isinstance(first, dict) and not _is_b64(first) else None


def parse_predict(document, specs: Mapping[str, TensorSpec], booleans: bool = True) -> JsonPredictRequest:
    """The inputs of a predict request body, as numpy arrays of the signature's dtypes (``booleans``: whether
    the body may hold true/false, see :func:`may_hold_booleans`)."""
    signature_name = signature_name_of(document)
    if request_format(document) == ROW:
        return JsonPredictRequest(signature_name, _parse_rows(document["instances"], specs, booleans), ROW)
    return JsonPredictRequest(signature_name, _parse_columns(document["inputs"], specs, booleans), COLUMNAR)


def _single_input(specs: Mapping[str, TensorSpec], where: str) -> TensorSpec:
    if len(specs) != 1:
        raise invalid_argument(f"{where} holds bare values, which needs a signature with exactly one input; this one "
                               f"has {len(specs)} ({', '.join(sorted(specs)) or 'none'}): name them in objects")
    return next(iter(specs.values()))


def _parse_rows(instances, specs: Mapping[str, TensorSpec], booleans: bool) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid_argument("'instances' must be a JSON list with one entry per batch row")
    if not instances:
        raise invalid_argument("empty batch: 'instances' is an empty list")
    named = all(isinstance(item, dict) and not _is_b64(item) for item in instances)
    if not named:
        if any(isinstance(item, dict) and not _is_b64(item) for item in instances):
            raise invalid_argument("'instances' mixes objects of named inputs with bare values")
        spec = _single_input(specs, "'instances'")
        return {spec.alias: to_array(instances, spec.alias, spec, booleans)}
    names = set(instances[0])
    for index, item in enumerate(instances):
        if set(item) != names:
            raise invalid_argument(f"instance {index} has inputs {{{','.join(sorted(item))}}} but instance 0 has "
                                   f"{{{','.join(sorted(names))}}}: every instance must name the same inputs")
    return {name: to_array([item[name] for item in instances], name, specs.get(name), booleans) for name in names}


def _parse_columns(inputs, specs: Mapping[str, TensorSpec], booleans: bool) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return {name: to_array(value, name, specs.get(name), booleans) for name, value in inputs.items()}
    spec = _single_input(specs, "'inputs'")
    return {spec.alias: to_array(inputs, spec.alias, spec, booleans)}


# -- tensors -------------------------------------------------------------------------------------------------


def _first_shape(value) -> list[int]:
    """The lengths along value[0][0]...: the shape every element must repeat (O(depth))."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _path(flat_index: int, shape) -> str:
    """``[i][j]...`` of an element given its index in row-major order."""
    return "".join(f"[{i}]" for i in np.unravel_index(flat_index, shape)) if len(shape) else ""


def _ragged(value, name: str) -> ServingError:
    """Where nested lists stop being rectangular: the shallowest element whose length differs from that of
    the [0][0]... element at its depth (levels are checked one after the other, so a list is never walked
    deeper than the shape the first elements set)."""
    shape, level = _first_shape(value), [value]
    for depth in range(len(shape) + 1):
        deeper, want = [], shape[depth] if depth < len(shape) else None
        for index, node in enumerate(level):
            is_list = isinstance(node, list)
            if is_list and len(node) == want:
                deeper.extend(node)
                continue
            if is_list or want is not None:  # a list below the leaves, a leaf or a list of another length
                where, first = _path(index, shape[:depth]) or "the value", "[0]" * depth or "the value"
                detail = (f"{where} is a list where {first} is a single value" if want is None else
                          f"{where} has {len(node)} entries where {first} has {want}" if is_list else
                          f"{where} is a single value where {first} is a list of {want}")
                return invalid_argument(f"input {name!r}: the nested lists are not rectangular (ragged): {detail}")
        level = deeper
    return invalid_argument(f"input {name!r}: the nested lists are not rectangular (ragged)")


def _check_depth(value, name: str, spec: TensorSpec | None) -> None:
    depth = len(_first_shape(value))
    if depth > MAX_TENSOR_RANK:
        declared = f" (its signature declares rank {len(spec.shape)})" if spec and spec.shape is not None else ""
        raise invalid_argument(f"input {name!r}: the lists nest {depth} deep, more than the {MAX_TENSOR_RANK} "
                               f"dimensions a tensor can have{declared}")


def _show(value) -> str:
    """A JSON value as an error message quotes it: short, and never recursing into a nested value."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        digits = str(value)
        return digits if len(digits) <= 40 else f"{digits[:20]}...({len(digits)} digits)"
    if isinstance(value, float):
        return json.dumps(value)  # NaN, Infinity as JSON spells them
    if isinstance(value, str):
        return json.dumps(value[:40]) + ("..." if len(value) > 40 else "")
    if _is_b64(value):
        return '{"b64": ...}'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_show(key)}: ..." for key in list(value)[:3]) + (", ...}" if len(value) > 3 else "}")
    return "[...]"


def _find_leaf(value, bad: Callable[[object], bool]) -> tuple[str, object] | None:
    """The first value (depth first) of nested lists for which ``bad`` holds, with its index path."""
    if not isinstance(value, list):
        return ("", value) if bad(value) else None
    stack = [[value, 0]]
    while stack:
        frame = stack[-1]
        node, index = frame
        if index == len(node):
            stack.pop()
            continue
        frame[1] = index + 1
        child = node[index]
        if isinstance(child, list):
            stack.append([child, 0])
        elif bad(child):
            return "".join(f"[{f[1] - 1}]" for f in stack), child
    return None


def _not_expected(name: str, expected: str, path: str, leaf, limits: str) -> ServingError:
    """The message for a JSON value that is not of the expected type (``limits``: the dtype's range)."""
    found = _show(leaf) + (f" at {path}" if path else "")
    if isinstance(leaf, bool):
        problem = "JSON true/false is not"
    elif isinstance(leaf, int) and expected != "bool":
        return invalid_argument(f"input {name!r}: value {found} is out of range for {expected} {limits}")
    elif isinstance(leaf, int):
        problem = "JSON numbers are not"
    elif isinstance(leaf, float):
        problem = "JSON decimal numbers are not"
    elif isinstance(leaf, str) or _is_b64(leaf):
        return invalid_argument(f"input {name!r} expects {expected} numbers, not strings or {{\"b64\": ...}} values "
                                f"(found {found}; those are for DT_STRING inputs)")
    else:
        problem = "the values are not all numbers"
    return invalid_argument(f"input {name!r}: {problem} of expected type: {expected} (found {found})")


def _is_bool(value) -> bool:
    return type(value) is bool


def _strings(value, name: str) -> np.ndarray:
    flat: list[bytes] = []
    shape: list[int] = []
    leaf_depth: list[int] = []

    def walk(node, depth: int) -> None:  # as deep as the first elements go (_check_depth bounds that)
        if isinstance(node, list):
            if leaf_depth and depth >= leaf_depth[0]:
                raise _ragged(value, name)
            if len(shape) <= depth:
                shape.append(len(node))
            elif shape[depth] != len(node):
                raise _ragged(value, name)
            for child in node:
                walk(child, depth + 1)
            return
        if not leaf_depth:
            leaf_depth.append(depth)
        elif leaf_depth[0] != depth:
            raise _ragged(value, name)
        if isinstance(node, str):
            try:
                flat.append(node.encode("utf-8"))
            except UnicodeEncodeError:  # a lone surrogate escape ("\ud800"), which rapidjson refuses
                raise invalid_argument(f"input {name!r}: string {_show(node)} holds a lone UTF-16 surrogate, which "
                                       "is not valid UTF-8 (binary data travels as {\"b64\": ...})") from None
        elif _is_b64(node):
            encoded = node["b64"]
            if not isinstance(encoded, str):
                raise invalid_argument(f"input {name!r}: the 'b64' value must be a string, not {_show(encoded)}")
            try:
                flat.append(base64.b64decode(encoded, validate=True))
            except (binascii.Error, ValueError) as error:
                raise invalid_argument(f"input {name!r}: invalid base64 in a 'b64' value ({_show(encoded)}): "
                                       f"{error}") from None
        else:
            raise invalid_argument(f"input {name!r}: JSON value {_show(node)} is not of expected type: "
                                   "string (use a string or {\"b64\": ...})")

    walk(value, 0)
    if leaf_depth and len(shape) != leaf_depth[0]:
        raise _ragged(value, name)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    try:
        return array.reshape(shape)
    except ValueError:
        raise _ragged(value, name) from None


def _contains_strings(value) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str) or _is_b64(value)


def to_array(value, name: str, spec: TensorSpec | None, booleans: bool = True) -> np.ndarray:
    """A JSON value (scalar or nested lists) as a numpy array of the dtype ``spec`` declares (inferred for an
    unknown input); ``booleans``: whether true/false may hide among numbers (numpy reads them as 1 and 0)."""
    _check_depth(value, name, spec)
    dtype = spec.dtype if spec else None
    if dtype == types_pb2.DT_STRING or (dtype is None and _contains_strings(value)):
        return _strings(value, name)
    target = NUMPY_DTYPES.get(dtype) if dtype is not None else None
    expected = short_dtype_name(dtype) if dtype is not None else ""
    if dtype is not None and target is None:
        raise invalid_argument(f"input {name!r}: {expected} tensors cannot be sent as JSON")
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError):
        raise _ragged(value, name) from None
    if target is None:
        return raw.astype(np.float32) if raw.dtype.kind == "f" else raw
    kind = raw.dtype.kind
    if target.kind == "b":
        limits, fits, accepts = "", kind == "b", _is_bool
    elif target.kind in "iu":
        info = np.iinfo(target)
        limits = f"[{info.min}, {info.max}]"
        fits = kind in "iu" and info.min <= int(raw.min(initial=0)) and int(raw.max(initial=0)) <= info.max

        def accepts(leaf) -> bool:
            return type(leaf) is int and info.min <= leaf <= info.max
    else:  # any JSON number a float64 holds, integers above 2^64 included, as TF Serving's IsNumber()
        limits, fits, accepts = f"[{-np.finfo(np.float64).max}, {np.finfo(np.float64).max}]", kind in "iuf", _is_number
    # numpy calls an empty list float64, but it holds no value of a wrong type
    if raw.size == 0 or fits and (target.kind == "b" or not booleans or _find_leaf(value, _is_bool) is None):
        with np.errstate(over="ignore"):  # beyond float32 is infinity, as TF Serving's GetFloat() makes it
            return raw.astype(target, copy=False)
    found = _find_leaf(value, lambda leaf: not accepts(leaf))
    if found:
        raise _not_expected(name, expected, *found, limits)
    with np.errstate(over="ignore"):  # numbers numpy widened to float64 or object (int64 with uint64 values...)
        return np.array(value, dtype=np.float64 if target.kind in "fc" else target).astype(target, copy=False)


def _is_number(value) -> bool:
    if type(value) is float:
        return True
    if type(value) is not int:
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


# -- responses ---------------------------------------------------------------------------------------------


def _string_value(value: bytes, binary: bool):
    if not binary:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}


def _jsonable(array: np.ndarray, name: str):
    if array.dtype == object or array.dtype.kind in "SU":
        binary = name.endswith("_bytes")

        def convert(node):
            if isinstance(node, list):
                return [convert(child) for child in node]
            return _string_value(node if isinstance(node, bytes) else str(node).encode(), binary)

        return convert(array.tolist())
    return array.tolist()


def make_response(outputs: Mapping[str, np.ndarray], request_format: str) -> dict:
    """The response document for a predict request of ``request_format``."""
    names = sorted(outputs)
    if request_format == COLUMNAR:
        if len(names) == 1:
            return {"outputs": _jsonable(outputs[names[0]], names[0])}
        return {"outputs": {name: _jsonable(outputs[name], name) for name in names}}
    rows = {np.shape(outputs[name])[0] if np.ndim(outputs[name]) else None for name in names}
    if len(rows) != 1 or None in rows:
        raise invalid_argument("The outputs do not share a batch (0th) dimension, which the row format needs; send "
                               "the request in columnar format ('inputs') instead")
    columns = {name: _jsonable(outputs[name], name) for name in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    count = rows.pop()
    return {"predictions": [{name: columns[name][i] for name in names} for i in range(count)]}


def dumps(document) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def error_body(message: str) -> bytes:
    return dumps({"error": message})
