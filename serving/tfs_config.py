"""Parse the TensorFlow Serving text-proto configs in serving/ the way tensorflow_model_server does.

``ModelServerConfig`` comes from the tensorflow-serving-api wheel. That wheel does not ship
``BatchingParameters`` (tensorflow_serving/servables/tensorflow/session_bundle_config.proto) nor
``MonitoringConfig`` (tensorflow_serving/config/monitoring_config.proto), so both are described here with the
protobuf runtime, in a private descriptor pool, using the field names and types of TF Serving's definitions (text
format is keyed by name). ``text_format.Parse`` against them rejects an unknown field or a wrong type, just as the
server's ``ParseProtoTextFile`` does at start-up. A field TF Serving adds later must be added here before use.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    def add_message(file: descriptor_pb2.FileDescriptorProto, name: str, fields) -> None:
        msg = file.message_type.add(name=name)
        for field_name, number, kind, type_name, label in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name

    optional, repeated = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    msg, boolean, string, int64 = _F.TYPE_MESSAGE, _F.TYPE_BOOL, _F.TYPE_STRING, _F.TYPE_INT64

    batching = descriptor_pb2.FileDescriptorProto(
        name="detserve/tfs/session_bundle_config_subset.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    add_message(
        batching,
        "BatchingParameters",
        [
            ("max_batch_size", 1, msg, ".google.protobuf.Int64Value", optional),
            ("batch_timeout_micros", 2, msg, ".google.protobuf.Int64Value", optional),
            ("max_enqueued_batches", 3, msg, ".google.protobuf.Int64Value", optional),
            ("num_batch_threads", 4, msg, ".google.protobuf.Int64Value", optional),
            ("thread_pool_name", 5, msg, ".google.protobuf.StringValue", optional),
            ("allowed_batch_sizes", 6, int64, None, repeated),
            ("pad_variable_length_inputs", 7, boolean, None, optional),
            ("enable_large_batch_splitting", 8, msg, ".google.protobuf.BoolValue", optional),
            ("max_execution_batch_size", 9, msg, ".google.protobuf.Int64Value", optional),
        ],
    )
    pool.Add(batching)

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="detserve/tfs/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    add_message(
        monitoring,
        "PrometheusConfig",
        [("enable", 1, boolean, None, optional), ("path", 2, string, None, optional)],
    )
    add_message(
        monitoring,
        "MonitoringConfig",
        [("prometheus_config", 1, msg, ".tensorflow.serving.PrometheusConfig", optional)],
    )
    pool.Add(monitoring)
    return pool


_POOL = _build_pool()
BatchingParameters = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
)
MonitoringConfig = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
)
ModelServerConfig = model_server_config_pb2.ModelServerConfig


def message_type_for(path: str | Path):
    """The proto message a serving/*.config file holds, chosen by its name (the convention of this repository)."""
    name = Path(path).name
    if name.startswith("models") and name.endswith(".config"):
        return ModelServerConfig
    if name.startswith("batching") and name.endswith(".config"):
        return BatchingParameters
    if name.startswith("monitoring") and name.endswith(".config"):
        return MonitoringConfig
    raise ValueError(f"{name}: no TF Serving config type is known for this file name")


def parse_text(text: str, message_type, source: str = "<string>"):
    """Parse ``text`` as ``message_type``; raises ``text_format.ParseError`` naming ``source`` on any mistake."""
    try:
        return text_format.Parse(text, message_type())
    except text_format.ParseError as exc:
        raise text_format.ParseError(f"{source}: {exc}") from exc


def parse_file(path: str | Path):
    path = Path(path)
    return parse_text(path.read_text(encoding="utf-8"), message_type_for(path), str(path))


def check_batching(params, source: str) -> list[str]:
    """TF Serving's own start-up checks on allowed_batch_sizes (batching_session.cc), plus sane values."""
    errors = []
    sizes = list(params.allowed_batch_sizes)
    if not params.HasField("max_batch_size"):
        errors.append(f"{source}: max_batch_size is not set")
    if sizes:
        if sizes != sorted(set(sizes)):
            errors.append(f"{source}: allowed_batch_sizes {sizes} must be strictly increasing")
        if params.HasField("max_batch_size") and sizes[-1] != params.max_batch_size.value:
            errors.append(
                f"{source}: the last allowed_batch_sizes entry ({sizes[-1]}) must equal max_batch_size "
                f"({params.max_batch_size.value})"
            )
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if params.HasField(name) and getattr(params, name).value < 1:
            errors.append(f"{source}: {name} must be >= 1")
    return errors


def model_configs(config) -> list:
    """The ModelConfig entries of a ModelServerConfig (only model_config_list is supported by this kit)."""
    return list(config.model_config_list.config)
