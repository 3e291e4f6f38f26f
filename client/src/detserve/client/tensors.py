"""numpy <-> ``tensorflow.TensorProto`` (the client's wire-compatible copy) and TF Serving's REST JSON."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from .protos import tensor_pb2, types_pb2

__all__ = ["make_tensor_proto", "make_ndarray", "json_to_ndarray", "DTYPE_NAMES"]

_NUMPY_DTYPES: dict[int, Any] = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_UINT16: np.uint16,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_BOOL: np.bool_,
    types_pb2.DT_HALF: np.float16,
    types_pb2.DT_STRING: object,
}
_DT_FOR_NUMPY = {np.dtype(v): k for k, v in _NUMPY_DTYPES.items() if v is not object}

#: DataType number -> name ("DT_FLOAT", ...).
DTYPE_NAMES = {v.number: v.name for v in types_pb2.DataType.DESCRIPTOR.values}

# Which repeated field holds the values of a dtype when tensor_content is empty.
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def make_tensor_proto(values: np.ndarray | list[bytes]) -> tensor_pb2.TensorProto:
    """A numpy array (numeric) or a list of bytes (-> DT_STRING [N]) as a TensorProto.

    Numeric arrays go into ``tensor_content`` (raw little-endian bytes), as ``tf.make_tensor_proto``
    does: no per-element encoding cost.
    """
    proto = tensor_pb2.TensorProto()
    if isinstance(values, (list, tuple)):
        proto.dtype = types_pb2.DT_STRING
        proto.tensor_shape.dim.add().size = len(values)
        proto.string_val.extend(bytes(v) for v in values)
        return proto
    array = np.asarray(values)
    dtype = _DT_FOR_NUMPY.get(array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype)
    if dtype is None:
        raise TypeError(f"unsupported array dtype {array.dtype}")
    proto.dtype = dtype
    for size in array.shape:
        proto.tensor_shape.dim.add().size = int(size)
    proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto


def make_ndarray(proto) -> np.ndarray:
    """A TensorProto (the client's or TensorFlow's class) as a numpy array; DT_STRING -> object array
    of bytes."""
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    count = int(np.prod(shape)) if shape else 1
    dtype = _NUMPY_DTYPES.get(proto.dtype)
    if dtype is None:
        raise TypeError(f"unsupported tensor dtype {DTYPE_NAMES.get(proto.dtype, proto.dtype)}")
    if proto.dtype == types_pb2.DT_STRING:
        values = list(proto.string_val)
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif proto.tensor_content:
        array = np.frombuffer(proto.tensor_content, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    elif proto.dtype == types_pb2.DT_HALF:
        array = np.asarray(proto.half_val, dtype=np.uint16).view(np.float16)
    else:
        array = np.asarray(getattr(proto, _VALUE_FIELDS[proto.dtype]), dtype=dtype)
    if array.size == count:
        return array.reshape(shape)
    if array.size == 0:
        return np.zeros(shape, dtype=dtype if dtype is not object else object)
    if array.size < count:  # TensorFlow repeats the last value to fill the shape
        array = np.concatenate([array, np.repeat(array[-1:], count - array.size)])
        return array.reshape(shape)
    raise ValueError(f"tensor has {array.size} values for shape {shape}")


def _decode_json_strings(value):
    if isinstance(value, list):
        return [_decode_json_strings(v) for v in value]
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def json_to_ndarray(value, *, string: bool = False) -> np.ndarray:
    """A (nested) JSON list from TF Serving's REST API as a numpy array. Strings (plain or
    ``{"b64": ...}``) become bytes in an object array."""
    if string:
        decoded = _decode_json_strings(value)
        array = np.empty(np.shape(np.asarray(decoded, dtype=object)), dtype=object)
        array[...] = np.asarray(decoded, dtype=object)
        return array
    return np.asarray(value)
