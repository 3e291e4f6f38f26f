"""One loaded model version: its SavedModel, its signatures, and how to run them.

Signatures are described from the SavedModel's own ``SignatureDef``s (``saved_model.pb``, ``serve`` tag), the
same protos TF Serving validates requests against and returns from GetModelMetadata; they run through the
loaded concrete functions (``tf.saved_model.load(...).signatures``), so a request never retraces a graph.
Nothing here is specific to detectors: any SavedModel's signatures are served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from detserve.client.contract import MAX_WARMUP_RECORDS, SERVE_TAG, warmup_path

from .errors import Code, code_from_value, failed_precondition, from_exception


class LoadError(Exception):
    """A version directory that cannot be served; the message says why (it ends up in the model status)."""

    def __init__(self, message: str, code: Code = Code.UNKNOWN):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TensorSpec:
    alias: str
    dtype: int  # tensorflow DataType enum
    shape: tuple[int | None, ...] | None  # None: unknown rank; None entries: unknown dimensions

    @classmethod
    def from_tensor_info(cls, alias: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
        if info.tensor_shape.unknown_rank:
            shape = None
        else:
            shape = tuple(d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
        return cls(alias, info.dtype, shape)


@dataclass
class Signature:
    name: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    function: object | None  # the loaded ConcreteFunction; None when the SavedModel has no callable for it

    @property
    def batchable(self) -> bool:
        """Server-side batching applies: every input and output has an unknown leading (batch) dimension."""
        specs = list(self.inputs.values()) + list(self.outputs.values())
        return bool(self.inputs) and all(s.shape is not None and len(s.shape) >= 1 and s.shape[0] is None
                                         for s in specs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature on numpy inputs (already validated); every output as numpy."""
        import tensorflow as tf

        if self.function is None:
            raise failed_precondition(f"signature {self.name!r} has no function in this SavedModel")
        feeds = {}
        for alias, array in inputs.items():
            spec = self.inputs[alias]
            feeds[alias] = tf.constant(array, dtype=tf.dtypes.as_dtype(spec.dtype))
        try:
            results = self.function(**feeds)
        except Exception as error:  # tf.errors.OpError keeps its code (e.g. INVALID_ARGUMENT for a corrupt JPEG)
            raise from_exception(error) from None
        return {alias: value.numpy() for alias, value in results.items()}


def read_saved_model_proto(path: Path | str) -> saved_model_pb2.SavedModel:
    path = Path(path)
    binary, text = path / "saved_model.pb", path / "saved_model.pbtxt"
    proto = saved_model_pb2.SavedModel()
    if binary.is_file():
        proto.ParseFromString(binary.read_bytes())
    elif text.is_file():
        text_format.Parse(text.read_text(), proto)
    else:
        raise LoadError(f"SavedModel file does not exist at: {path}/{{saved_model.pbtxt|saved_model.pb}}",
                        Code.NOT_FOUND)
    return proto


def serve_meta_graph(proto: saved_model_pb2.SavedModel, path: Path | str) -> meta_graph_pb2.MetaGraphDef:
    for meta_graph in proto.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    tags = [list(m.meta_info_def.tags) for m in proto.meta_graphs]
    raise LoadError(f"SavedModel at {path} has no MetaGraphDef tagged {SERVE_TAG!r} (tags present: {tags})",
                    Code.NOT_FOUND)


@dataclass(eq=False)
class Servable:
    """A loaded version. Build with :meth:`load`; :meth:`unload` drops the TensorFlow objects."""

    name: str
    version: int
    path: Path
    loaded: object  # what tf.saved_model.load returned; None once unloaded
    signature_defs: get_model_metadata_pb2.SignatureDefMap  # as GetModelMetadata returns them
    signatures: dict[str, Signature]

    @classmethod
    def load(cls, name: str, version: int, path: Path | str) -> Servable:
        import tensorflow as tf

        path = Path(path)
        try:
            meta_graph = serve_meta_graph(read_saved_model_proto(path), path)
        except LoadError:
            raise
        except Exception as error:  # a truncated or garbage saved_model.pb
            raise LoadError(f"cannot read the SavedModel at {path}: {type(error).__name__}: {error}",
                            Code.DATA_LOSS) from None
        try:
            loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        except Exception as error:
            message = getattr(error, "message", None) or str(error)
            code = getattr(error, "error_code", None)
            raise LoadError(f"tf.saved_model.load({path}) failed: {type(error).__name__}: {message.strip()}",
                            code_from_value(code) if isinstance(code, int) else Code.UNKNOWN) from None
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        signatures: dict[str, Signature] = {}
        functions = dict(loaded.signatures)
        for key, signature_def in meta_graph.signature_def.items():
            signature_defs.signature_def[key].CopyFrom(signature_def)
            signatures[key] = Signature(
                name=key,
                method_name=signature_def.method_name,
                inputs={a: TensorSpec.from_tensor_info(a, i) for a, i in sorted(signature_def.inputs.items())},
                outputs={a: TensorSpec.from_tensor_info(a, i) for a, i in sorted(signature_def.outputs.items())},
                function=functions.get(key),
            )
        return cls(name, version, path, loaded, signature_defs, signatures)

    def warmup_records(self) -> list[prediction_log_pb2.PredictionLog]:
        """The PredictionLogs of ``assets.extra/tf_serving_warmup_requests`` (none if the file is absent)."""
        import tensorflow as tf

        path = warmup_path(self.path)
        if not path.is_file():
            return []
        records = []
        try:
            for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
                if len(records) >= MAX_WARMUP_RECORDS:
                    raise LoadError(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}",
                                    Code.INVALID_ARGUMENT)
                log = prediction_log_pb2.PredictionLog()
                log.ParseFromString(raw)
                records.append(log)
        except LoadError:
            raise
        except Exception as error:
            raise LoadError(f"cannot read warmup records {path}: {type(error).__name__}: {error}",
                            Code.DATA_LOSS) from None
        return records

    def unload(self) -> None:
        self.loaded = None
        for signature in self.signatures.values():
            signature.function = None
