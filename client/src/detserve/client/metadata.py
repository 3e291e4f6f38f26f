"""What the client learns from TF Serving's GetModelMetadata and GetModelStatus (never hard-coded).

The detserve export contract (detserve.client.contract, docs/export.md):

- ``serving_default``: ``images`` uint8 [B, H, W, 3] -> detections;
- ``serving_bytes``: ``encoded_images`` string [B] (JPEG/PNG) -> detections;
- ``model_info``: its input's static shape [-1, height, width, 3] is the model's input size; called with
  one image of that size it returns ``class_ids`` and ``class_names``.

The client finds the signatures by their inputs' dtypes and ranks (not by name) so any TF Serving
detector with TFOD2's output names works, and falls back to a static [B, H, W, 3] image input for the
input size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .contract import (
    DEFAULT_SIGNATURE,
    INFO_SIGNATURE,
    NUMERIC_OUTPUTS,
    SIGNATURE_DEF_FIELD,
    SIGNATURE_DEF_MAP_TYPE_URL,
    is_internal_signature,
)
from .protos import get_model_metadata_pb2, get_model_status_pb2, model_pb2, types_pb2

__all__ = ["TensorSpec", "Signature", "ModelMetadata", "ModelStatus", "VersionStatus"]

@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature."""

    key: str  # the name in the signature ("images")
    dtype: str  # "DT_UINT8", ...
    shape: tuple[int | None, ...] | None  # None: unknown rank; None in a dimension: any size
    tensor_name: str = ""  # the graph tensor ("serving_default_images:0")

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": None if self.shape is None else list(self.shape),
                "tensor_name": self.tensor_name}


@dataclass(frozen=True)
class Signature:
    name: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    @property
    def is_detection(self) -> bool:
        return all(key in self.outputs for key in NUMERIC_OUTPUTS) and len(self.inputs) == 1

    @property
    def input(self) -> TensorSpec:
        (spec,) = self.inputs.values()
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"method_name": self.method_name,
                "inputs": {k: v.to_dict() for k, v in sorted(self.inputs.items())},
                "outputs": {k: v.to_dict() for k, v in sorted(self.outputs.items())}}


def _spec(key: str, info) -> TensorSpec:
    shape = None
    if not info.tensor_shape.unknown_rank:
        shape = tuple(int(d.size) if d.size >= 0 else None for d in info.tensor_shape.dim)
    dtype = types_pb2.DataType.Name(info.dtype) if info.dtype in types_pb2.DataType.values() else str(info.dtype)
    return TensorSpec(key, dtype, shape, info.name)


@dataclass
class ModelMetadata:
    """A served model's signatures, input size and class names."""

    model: str
    version: int | None
    signatures: dict[str, Signature]
    input_size: tuple[int, int] | None = None  # (height, width) the model resizes to
    class_names: dict[int, str] | None = None  # filled by Detector.metadata(class_names=True)
    raw: Any = field(default=None, repr=False)  # the answer: GetModelMetadataResponse (gRPC), JSON (REST)

    @classmethod
    def from_proto(cls, response: get_model_metadata_pb2.GetModelMetadataResponse) -> ModelMetadata:
        """A GetModelMetadataResponse (gRPC's answer): its packed SignatureDefMap, unpacked once."""
        if SIGNATURE_DEF_FIELD not in response.metadata:
            raise ValueError("GetModelMetadata returned no signature_def")
        packed = response.metadata[SIGNATURE_DEF_FIELD]
        if packed.type_url.split("/")[-1] != SIGNATURE_DEF_MAP_TYPE_URL.split("/")[-1]:
            raise ValueError(f"unexpected signature_def type {packed.type_url!r}")
        signature_map = get_model_metadata_pb2.SignatureDefMap.FromString(packed.value)
        return cls.from_signature_map(response.model_spec, signature_map, raw=response)

    @classmethod
    def from_signature_map(cls, model_spec: model_pb2.ModelSpec, signature_map: get_model_metadata_pb2.SignatureDefMap,
                           raw: Any = None) -> ModelMetadata:
        """The model's ModelSpec and SignatureDefMap, however they arrived (gRPC's Any, REST's JSON)."""
        signatures = {}
        for name, definition in signature_map.signature_def.items():
            if is_internal_signature(name):
                continue
            signatures[name] = Signature(
                name, definition.method_name,
                {k: _spec(k, v) for k, v in definition.inputs.items()},
                {k: _spec(k, v) for k, v in definition.outputs.items()})
        version = model_spec.version.value if model_spec.HasField("version") else None
        metadata = cls(model_spec.name, version, signatures, raw=raw)
        metadata.input_size = metadata._input_size()
        return metadata

    def _find(self, dtype: str, rank: int) -> Signature | None:
        candidates = [s for s in self.signatures.values() if s.is_detection and s.input.dtype == dtype
                      and (s.input.shape is None or len(s.input.shape) == rank)]
        candidates.sort(key=lambda s: (s.name != DEFAULT_SIGNATURE, s.name))
        return candidates[0] if candidates else None

    @property
    def image_signature(self) -> Signature | None:
        """The detection signature taking uint8 images [B, H, W, 3] (``serving_default``)."""
        return self._find("DT_UINT8", 4)

    @property
    def bytes_signature(self) -> Signature | None:
        """The detection signature taking encoded images string [B] (``serving_bytes``)."""
        return self._find("DT_STRING", 1)

    @property
    def info_signature(self) -> Signature | None:
        return self.signatures.get(INFO_SIGNATURE)

    def _input_size(self) -> tuple[int, int] | None:
        candidates = [self.info_signature, self.image_signature]
        for signature in candidates:
            if signature is None or len(signature.inputs) != 1:
                continue
            shape = signature.input.shape
            if shape is not None and len(shape) == 4 and shape[1] and shape[2]:
                return int(shape[1]), int(shape[2])
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "input_size": None if self.input_size is None else {"height": self.input_size[0],
                                                                "width": self.input_size[1]},
            "class_names": None if self.class_names is None else {str(k): v for k, v in
                                                                  sorted(self.class_names.items())},
            "signatures": {name: s.to_dict() for name, s in sorted(self.signatures.items())},
        }


def model_info_inputs(meta: ModelMetadata) -> tuple[Signature, dict[str, np.ndarray]] | None:
    """The ``model_info`` call that answers the class names: one black image of the input size (None: the
    model has no such signature, or no static input size)."""
    signature = meta.info_signature
    if signature is None or meta.input_size is None or len(signature.inputs) != 1:
        return None
    height, width = meta.input_size
    return signature, {signature.input.key: np.zeros((1, height, width, 3), np.uint8)}


def class_names_from_info(outputs: dict[str, np.ndarray]) -> dict[int, str] | None:
    """``model_info``'s outputs -> {class id: name}."""
    if "class_ids" not in outputs or "class_names" not in outputs:
        return None
    ids = np.asarray(outputs["class_ids"])[0]
    names = outputs["class_names"][0]
    return {int(i): (n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n))
            for i, n in zip(ids, names, strict=True)}


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # "AVAILABLE", "LOADING", ...
    error_code: str  # "OK", ...
    error_message: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "state": self.state, "error_code": self.error_code,
                "error_message": self.error_message}


@dataclass
class ModelStatus:
    """GetModelStatus: the state of each version of a model."""

    model: str
    versions: list[VersionStatus]

    @property
    def available(self) -> bool:
        return any(v.state == "AVAILABLE" for v in self.versions)

    @property
    def available_versions(self) -> list[int]:
        return sorted(v.version for v in self.versions if v.state == "AVAILABLE")

    def is_available(self, version: int | None = None) -> bool:
        """``version`` is AVAILABLE, or (no version given) any version is."""
        return version in self.available_versions if version is not None else self.available

    @classmethod
    def from_proto(cls, model: str, response: get_model_status_pb2.GetModelStatusResponse) -> ModelStatus:
        states = get_model_status_pb2.ModelVersionStatus.State
        versions = []
        for item in response.model_version_status:
            code = item.status.error_code
            versions.append(VersionStatus(
                int(item.version),
                states.Name(item.state) if item.state in states.values() else str(item.state),
                item.status.DESCRIPTOR.fields_by_name["error_code"].enum_type.values_by_number[code].name
                if code in item.status.DESCRIPTOR.fields_by_name["error_code"].enum_type.values_by_number
                else str(code),
                item.status.error_message))
        versions.sort(key=lambda v: v.version)
        return cls(model, versions)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "available": self.available,
                "versions": [v.to_dict() for v in self.versions]}
