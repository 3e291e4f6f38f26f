"""detserve-client: thin gRPC/REST client for TensorFlow Serving object detectors (no TensorFlow needed)."""
