"""TF Serving's REST JSON <-> numpy (``tensorflow_serving/util/json_tensor.cc`` behaviour).

Requests: ``{"signature_name": ..., "instances": ...}`` (row format: a list with one entry per batch row, each an
object of named inputs, or a bare value when the signature has one input) or ``{"inputs": ...}`` (columnar: an
object of named tensors, or one bare tensor), never both. Values are converted to the dtype the signature
declares; binary strings travel as ``{"b64": "..."}``. Responses: ``{"predictions": ...}`` for row requests (a
list of per-row objects, or of bare values for a single output) and ``{"outputs": ...}`` for columnar ones (an
object, or the bare tensor for a single output). Output names ending in ``_bytes`` are written as
``{"b64": ...}``, as are strings that are not valid UTF-8 (TF Serving would emit invalid JSON for those).
``NaN`` and ``Infinity`` are accepted and written, as TF Serving does.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import types_pb2

from .errors import invalid_argument
from .servable import TensorSpec
from .tensors import NUMPY_DTYPES, short_dtype_name

ROW, COLUMNAR = "row", "columnar"


@dataclass
class JsonPredictRequest:
    signature_name: str
    inputs: dict[str, np.ndarray]
    format: str  # ROW | COLUMNAR


def loads(body: bytes | str):
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise invalid_argument(f"JSON Parse error: {error}") from None


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


def parse_predict(document, specs: Mapping[str, TensorSpec]) -> JsonPredictRequest:
    """The inputs of a predict request body, as numpy arrays of the signature's dtypes."""
    signature_name = signature_name_of(document)
    if request_format(document) == ROW:
        return JsonPredictRequest(signature_name, _parse_rows(document["instances"], specs), ROW)
    return JsonPredictRequest(signature_name, _parse_columns(document["inputs"], specs), COLUMNAR)


def _single_input(specs: Mapping[str, TensorSpec], where: str) -> TensorSpec:
    if len(specs) != 1:
        raise invalid_argument(f"{where} holds bare values, which needs a signature with exactly one input; this one "
                               f"has {len(specs)} ({', '.join(sorted(specs)) or 'none'}): name them in objects")
    return next(iter(specs.values()))


def _parse_rows(instances, specs: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid_argument("'instances' must be a JSON list with one entry per batch row")
    if not instances:
        raise invalid_argument("empty batch: 'instances' is an empty list")
    named = all(isinstance(item, dict) and not _is_b64(item) for item in instances)
    if not named:
        if any(isinstance(item, dict) and not _is_b64(item) for item in instances):
            raise invalid_argument("'instances' mixes objects of named inputs with bare values")
        spec = _single_input(specs, "'instances'")
        return {spec.alias: to_array(instances, spec.alias, spec.dtype)}
    names = set(instances[0])
    for index, item in enumerate(instances):
        if set(item) != names:
            raise invalid_argument(f"instance {index} has inputs {{{','.join(sorted(item))}}} but instance 0 has "
                                   f"{{{','.join(sorted(names))}}}: every instance must name the same inputs")
    return {name: to_array([item[name] for item in instances], name, _dtype(specs, name)) for name in names}


def _parse_columns(inputs, specs: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return {name: to_array(value, name, _dtype(specs, name)) for name, value in inputs.items()}
    spec = _single_input(specs, "'inputs'")
    return {spec.alias: to_array(inputs, spec.alias, spec.dtype)}


def _dtype(specs: Mapping[str, TensorSpec], name: str) -> int | None:
    spec = specs.get(name)
    return spec.dtype if spec else None  # an unknown name is reported by the input-name check


def _strings(value, name: str) -> np.ndarray:
    flat: list[bytes] = []
    shape: list[int] = []
    leaf_depth: list[int] = []

    def ragged():
        return invalid_argument(f"input {name!r}: the nested lists are not rectangular (ragged)")

    def walk(node, depth: int) -> None:
        if isinstance(node, list):
            if leaf_depth and depth >= leaf_depth[0]:
                raise ragged()
            if len(shape) <= depth:
                shape.append(len(node))
            elif shape[depth] != len(node):
                raise ragged()
            for child in node:
                walk(child, depth + 1)
            return
        if not leaf_depth:
            leaf_depth.append(depth)
        elif leaf_depth[0] != depth:
            raise ragged()
        if isinstance(node, str):
            flat.append(node.encode("utf-8"))
        elif _is_b64(node):
            encoded = node["b64"]
            if not isinstance(encoded, str):
                raise invalid_argument(f"input {name!r}: the 'b64' value must be a string")
            try:
                flat.append(base64.b64decode(encoded, validate=True))
            except (binascii.Error, ValueError) as error:
                raise invalid_argument(f"input {name!r}: invalid base64 in a 'b64' value: {error}") from None
        else:
            raise invalid_argument(f"input {name!r}: JSON value {json.dumps(node)[:40]} is not of expected type: "
                                   "string (use a string or {\"b64\": ...})")

    walk(value, 0)
    if leaf_depth and len(shape) != leaf_depth[0]:
        raise ragged()
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    try:
        return array.reshape(shape)
    except ValueError:
        raise ragged() from None


def _contains_strings(value) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str) or _is_b64(value)


def to_array(value, name: str, dtype: int | None) -> np.ndarray:
    """A JSON value (scalar or nested lists) as a numpy array of ``dtype`` (inferred when None)."""
    if dtype == types_pb2.DT_STRING or (dtype is None and _contains_strings(value)):
        return _strings(value, name)
    if _contains_strings(value):
        raise invalid_argument(f"input {name!r} expects {short_dtype_name(dtype)} numbers, not strings or "
                               "{\"b64\": ...} values (those are for DT_STRING inputs)")
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError):
        raise invalid_argument(f"input {name!r}: the nested lists are not rectangular (ragged)") from None
    kind = raw.dtype.kind
    if dtype is None:
        return raw.astype(np.float32) if kind == "f" else raw
    target = NUMPY_DTYPES.get(dtype)
    expected = short_dtype_name(dtype)
    if target is None:
        raise invalid_argument(f"input {name!r}: {expected} tensors cannot be sent as JSON")
    if kind in "OUS":
        raise invalid_argument(f"input {name!r}: the values are not all numbers of expected type: {expected} "
                               "(strings, objects or null found)")
    if target.kind == "b":
        if kind != "b":
            raise invalid_argument(f"input {name!r}: JSON numbers are not of expected type: bool (use true/false)")
        return raw
    if kind == "b":
        raise invalid_argument(f"input {name!r}: JSON true/false is not of expected type: {expected}")
    if target.kind in "iu":
        if kind == "f":
            raise invalid_argument(f"input {name!r}: JSON decimal numbers are not of expected type: {expected}")
        if raw.size:
            info = np.iinfo(target)
            low, high = raw.min(), raw.max()
            if int(low) < info.min or int(high) > info.max:
                raise invalid_argument(f"input {name!r}: value {int(low) if int(low) < info.min else int(high)} is out "
                                       f"of range for {expected} [{info.min}, {info.max}]")
    return raw.astype(target, copy=False)


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
