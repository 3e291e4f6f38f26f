"""Parse the TensorFlow Serving text-proto configs in serving/ the way tensorflow_model_server does.

The messages are TF Serving's own, compiled by protoc: ``ModelServerConfig`` from the tensorflow-serving-api
wheel (the server's one source of TF Serving protos), and the two that wheel does not ship from verbatim copies
of TF Serving's definitions beside this module: ``BatchingParameters`` (session_bundle_config.proto) and
``MonitoringConfig`` (monitoring_config.proto). ``text_format.Parse`` against them rejects an unknown field or a
wrong type, just as the server's ``ParseProtoTextFile`` does at start-up. After editing a .proto file, regenerate
its module from the repository root (grpcio-tools is in requirements/runtime.txt)::

    python -m grpc_tools.protoc --proto_path=detserve/serving=serving --python_out=build/protos \
        detserve/serving/session_bundle_config.proto detserve/serving/monitoring_config.proto
    cp build/protos/detserve/serving/*_pb2.py serving/
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from .monitoring_config_pb2 import MonitoringConfig
from .session_bundle_config_pb2 import BatchingParameters

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
