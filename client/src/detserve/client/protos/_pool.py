"""The client's private protobuf descriptor pool.

The generated ``*_pb2`` modules in this package declare TensorFlow's message names
(``tensorflow.TensorProto``, ``tensorflow.serving.PredictRequest``, ...). They are registered here,
not in protobuf's default pool, so the client can be imported in the same process as TensorFlow or
``tensorflow-serving-api`` (whose files already define those names in the default pool).
"""

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()

# Well-known types the client's files import.
for _module in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_module.DESCRIPTOR.serialized_pb)
