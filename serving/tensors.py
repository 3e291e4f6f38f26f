"""TensorProto <-> numpy, with the shortcuts that matter for images.

Requests: :func:`declared` reads a TensorProto's dtype and shape from its header, so the data plane validates
them before anything is allocated. A tensor sent as ``tensor_content`` (what ``tf.make_tensor_proto`` writes for
any numeric array) is viewed with ``np.frombuffer``, no per-element work; anything else goes through
``tf.make_ndarray`` once its typed field's values are counted against the shape (a short field is repeated to
fill it, as ``Tensor::FromProto`` does, so a few bytes can declare gigabytes: that is bounded).

Responses are written the way TF Serving writes them by default (``Tensor::AsProtoField``): values in the typed
repeated field (``float_val``, ``int_val``, ``string_val``...), not ``tensor_content``, so clients that read
``outputs["detection_scores"].float_val`` directly work against both servers.
"""

from __future__ import annotations

import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from detserve.client.contract import MAX_MESSAGE_BYTES

from .errors import invalid_argument

DT = types_pb2.DataType

# Numeric dtypes numpy represents natively (others, e.g. bfloat16 or quantized types, go through TensorFlow).
NUMPY_DTYPES: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_COMPLEX64: np.dtype(np.complex64),
    types_pb2.DT_COMPLEX128: np.dtype(np.complex128),
}
_ENUM_BY_NUMPY = {dtype: enum for enum, dtype in NUMPY_DTYPES.items()}

# The repeated field Tensor::AsProtoField fills for each dtype.
_VALUE_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
}


# The typed field Tensor::FromProto reads for each dtype, and its entries per element (complex: two).
_FROM_PROTO_FIELD: dict[int, tuple[str, int]] = {
    **{enum: (field, 1) for enum, field in _VALUE_FIELD.items()},
    types_pb2.DT_HALF: ("half_val", 1),
    types_pb2.DT_BFLOAT16: ("half_val", 1),
    types_pb2.DT_STRING: ("string_val", 1),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", 2),
    **{enum: ("int_val", 1) for enum in (types_pb2.DT_QINT8, types_pb2.DT_QUINT8, types_pb2.DT_QINT16,
                                         types_pb2.DT_QUINT16, types_pb2.DT_QINT32)},
}

Shape = tuple[int, ...]


def dtype_name(enum: int) -> str:
    """``DT_UINT8`` for 4: the names TF Serving's messages and the metadata JSON use."""
    try:
        return DT.Name(enum)
    except ValueError:
        return f"DT_<{enum}>"


def short_dtype_name(enum: int) -> str:
    """``uint8`` for DT_UINT8 (TensorFlow's own spelling in its error messages)."""
    return dtype_name(enum).removeprefix("DT_").lower()


def dtype_enum_of(array: np.ndarray) -> int:
    """The DataType enum of a numpy array; object/bytes/str arrays are DT_STRING."""
    if array.dtype.kind in "OSU":
        return types_pb2.DT_STRING
    enum = _ENUM_BY_NUMPY.get(array.dtype)
    if enum is not None:
        return enum
    import tensorflow as tf

    return tf.dtypes.as_dtype(array.dtype).as_datatype_enum


def numpy_dtype(enum: int):
    """The numpy dtype for a DataType enum (``object`` for DT_STRING)."""
    if enum == types_pb2.DT_STRING:
        return np.dtype(object)
    dtype = NUMPY_DTYPES.get(enum)
    if dtype is not None:
        return dtype
    import tensorflow as tf

    return np.dtype(tf.dtypes.as_dtype(enum).as_numpy_dtype)


def _where(name: str) -> str:
    return f"tensor parsing error: {name}" if name else "tensor parsing error"


def declared(proto: tensor_pb2.TensorProto, name: str = "") -> tuple[int, Shape]:
    """The dtype and shape a request TensorProto declares, from its header alone (its values are not read)."""
    if proto.dtype == types_pb2.DT_INVALID:
        raise invalid_argument(f"{_where(name)}: the tensor has no dtype (DT_INVALID)")
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"{_where(name)}: the tensor shape has unknown rank")
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise invalid_argument(f"{_where(name)}: negative dimension in shape {list(shape)}")
    return proto.dtype, shape


def numeric_bytes(proto: tensor_pb2.TensorProto) -> int | None:
    """The bytes a numeric TensorProto's header declares; None for strings and dtypes numpy lacks."""
    dtype = NUMPY_DTYPES.get(proto.dtype)
    if dtype is None or proto.tensor_shape.unknown_rank:
        return None
    return math.prod(max(dim.size, 0) for dim in proto.tensor_shape.dim) * dtype.itemsize


def _check_value_count(proto: tensor_pb2.TensorProto, shape: Shape, where: str, max_bytes: int) -> None:
    """The typed field's values against the shape's elements (Python ints: no overflow)."""
    field, per_element = _FROM_PROTO_FIELD.get(proto.dtype, (None, 1))
    if field is None:  # no typed field (e.g. DT_RESOURCE): TensorFlow's parser decides
        return
    count, elements = len(getattr(proto, field)) // per_element, math.prod(shape)
    if count > elements:
        raise invalid_argument(f"{where}: {field} has {count} values but shape {list(shape)} has {elements} elements")
    if count == elements:
        return
    if proto.dtype == types_pb2.DT_STRING:  # repeating a string copies it: one per element, unlike TensorFlow
        raise invalid_argument(f"{where}: string_val has {count} strings but shape {list(shape)} has {elements} "
                               "elements: send one string per element")
    size = elements * numpy_dtype(proto.dtype).itemsize
    if size > max_bytes:
        raise invalid_argument(
            f"{where}: {field} has {count} values for shape {list(shape)} ({elements} elements): filling it with "
            f"the last value would make {size} bytes of {short_dtype_name(proto.dtype)}, above the server's limit "
            f"of {max_bytes} bytes per tensor (--max-message-bytes)")


def to_ndarray(proto: tensor_pb2.TensorProto, name: str = "", max_bytes: int = MAX_MESSAGE_BYTES) -> np.ndarray:
    """A numpy array for a request TensorProto; INVALID_ARGUMENT naming ``name`` if it cannot be parsed.

    A typed field shorter than the shape is filled with its last value (zeros when empty), as TensorFlow does,
    only while the tensor stays within ``max_bytes``; a longer one is refused."""
    where = _where(name)
    enum, shape = declared(proto, name)
    dtype = NUMPY_DTYPES.get(enum)
    if proto.tensor_content and dtype is not None:
        content = proto.tensor_content
        expected = numeric_bytes(proto)
        if len(content) != expected:
            raise invalid_argument(
                f"{where}: tensor_content has {len(content)} bytes but shape {list(shape)} of "
                f"{dtype_name(enum)} needs {expected}"
            )
        return np.frombuffer(content, dtype=dtype).reshape(shape)
    if not proto.tensor_content:
        _check_value_count(proto, shape, where, max_bytes)
    import tensorflow as tf

    try:
        array = tf.make_ndarray(proto)
    except Exception as error:  # noqa: BLE001 - any parse failure is the client's
        raise invalid_argument(f"{where}: {error}") from None
    if tuple(array.shape) != shape:
        raise invalid_argument(f"{where}: values do not fill shape {list(shape)}")
    return array


def _shape_proto(shape) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in shape])


def from_ndarray(array: np.ndarray, enum: int | None = None) -> tensor_pb2.TensorProto:
    """A TensorProto holding ``array`` in its typed repeated field, as TF Serving answers."""
    array = np.asarray(array)
    enum = dtype_enum_of(array) if enum is None else enum
    if enum == types_pb2.DT_STRING:
        proto = tensor_pb2.TensorProto(dtype=enum, tensor_shape=_shape_proto(array.shape))
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist())
        return proto
    field = _VALUE_FIELD.get(enum)
    if field is not None:
        proto = tensor_pb2.TensorProto(dtype=enum, tensor_shape=_shape_proto(array.shape))
        getattr(proto, field).extend(array.ravel().tolist())
        return proto
    if enum == types_pb2.DT_HALF:
        proto = tensor_pb2.TensorProto(dtype=enum, tensor_shape=_shape_proto(array.shape))
        proto.half_val.extend(array.astype(np.float16).view(np.uint16).ravel().tolist())
        return proto
    import tensorflow as tf

    return tf.make_tensor_proto(array, dtype=tf.dtypes.as_dtype(enum))


def make_tensor_proto(array, dtype_enum: int | None = None) -> tensor_pb2.TensorProto:
    """A request TensorProto in ``tensor_content`` form (numeric) or ``string_val`` (strings), as clients send."""
    array = np.asarray(array)
    enum = dtype_enum_of(array) if dtype_enum is None else dtype_enum
    if enum == types_pb2.DT_STRING:
        return from_ndarray(array, enum)
    dtype = NUMPY_DTYPES[enum]
    return tensor_pb2.TensorProto(dtype=enum, tensor_shape=_shape_proto(array.shape),
                                  tensor_content=np.ascontiguousarray(array, dtype=dtype).tobytes())
