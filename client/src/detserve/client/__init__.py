"""detserve-client: thin gRPC/REST client for TensorFlow Serving object detectors (no TensorFlow needed).

    from detserve.client import Detector

    with Detector("grpc://localhost:8500", model="detector") as detector:
        for d in detector.detect("photo.jpg", score_threshold=0.5):
            print(d.label, d.score, d.box)
"""

from .detections import Box, Detection
from .detector import AsyncDetector, Detector
from .errors import DeadlineExceeded, DetserveClientError, InvalidInput, ModelNotFound, ServerUnavailable
from .metadata import ModelMetadata, ModelStatus, Signature, TensorSpec, VersionStatus
from .retry import RetryPolicy

__all__ = [
    "Detector",
    "AsyncDetector",
    "Detection",
    "Box",
    "ModelMetadata",
    "ModelStatus",
    "VersionStatus",
    "Signature",
    "TensorSpec",
    "RetryPolicy",
    "DetserveClientError",
    "ModelNotFound",
    "InvalidInput",
    "ServerUnavailable",
    "DeadlineExceeded",
]
