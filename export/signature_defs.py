"""A version's signatures as TF Serving's GetModelMetadata returns them: the SignatureDefs in saved_model.pb.

Read from the file, not by loading the SavedModel, so it is cheap and needs no variables.
"""

from __future__ import annotations

from pathlib import Path

from detserve.client.contract import (
    INFO_INPUT,
    INFO_SIGNATURE,
    PREDICT_METHOD,
    SERVE_TAG,
    SIGNATURES,
    is_internal_signature,
)

from .errors import ExportError


def read_signature_defs(version_path: Path | str) -> dict:
    """{name: SignatureDef} of the ``serve`` MetaGraph in ``<version>/saved_model.pb``."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(version_path) / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return {name: meta_graph.signature_def[name] for name in sorted(meta_graph.signature_def)
                    if not is_internal_signature(name)}
    raise ExportError(f"{version_path}/saved_model.pb has no MetaGraph tagged 'serve'")


def _tensor_info(info) -> list:
    from tensorflow.dtypes import as_dtype

    dims = None if info.tensor_shape.unknown_rank else [int(d.size) for d in info.tensor_shape.dim]
    return [as_dtype(info.dtype).name, dims]


def describe_signatures(version_path: Path | str) -> dict[str, dict]:
    """{name: {"method": ..., "inputs": {key: [dtype, shape]}, "outputs": {...}}}, -1 = any size."""
    return {
        name: {
            "method": sd.method_name,
            "inputs": {key: _tensor_info(sd.inputs[key]) for key in sorted(sd.inputs)},
            "outputs": {key: _tensor_info(sd.outputs[key]) for key in sorted(sd.outputs)},
        }
        for name, sd in read_signature_defs(version_path).items()
    }


def model_input_size(version_path: Path | str) -> tuple[int, int] | None:
    """The model's input (height, width) from an exported version's ``model_info`` signature."""
    signature_defs = read_signature_defs(version_path)
    if INFO_SIGNATURE not in signature_defs:
        return None
    dims = [int(d.size) for d in signature_defs[INFO_SIGNATURE].inputs[INFO_INPUT].tensor_shape.dim]
    return (dims[1], dims[2]) if len(dims) == 4 and dims[1] > 0 and dims[2] > 0 else None


def check_signatures(version_path: Path | str) -> dict[str, dict]:
    """``describe_signatures`` of a staged version, after checking that it has detserve's three signatures, all
    with TF Serving's Predict method (verification step 1 of docs/export.md)."""
    signatures = describe_signatures(version_path)
    missing = [name for name in SIGNATURES if name not in signatures]
    if missing:
        raise ExportError(f"exported SavedModel lacks signatures {missing}")
    wrong = {name: s["method"] for name, s in signatures.items() if s["method"] != PREDICT_METHOD}
    if wrong:
        raise ExportError(f"signatures with a method other than {PREDICT_METHOD}: {wrong}")
    return signatures
