"""Strict schema validation of rendered objects against one Kubernetes version (kubernetes-validate)."""

from __future__ import annotations

from collections.abc import Iterator

import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

from .objects import describe

# The Kubernetes version the manifests are validated against: 1.34, where the preStop `sleep` action became GA (beta
# and on by default since 1.30). Every other field used is GA there, except topologySpreadConstraints.matchLabelKeys
# (beta, on by default since 1.27). The manifests also validate against 1.30 to 1.37.
DEFAULT_KUBERNETES_VERSION = "1.34"


def schema_errors(objects: list[dict], version: str, custom_kinds: frozenset[str]) -> Iterator[str]:
    """One message per object that is not valid for `version` (strict: unknown fields are errors)."""
    for obj in objects:
        what = describe(obj)
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except ValidationError as exc:
            path = ".".join(str(p) for p in exc.path) or "(top level)"
            yield f"{what}: not valid for Kubernetes {exc.version} (strict): {path}: {exc.message}"
        except SchemaNotFoundError:
            if obj.get("kind") not in custom_kinds:
                yield (
                    f"{what}: Kubernetes {version} has no kind {obj.get('kind')} in {obj.get('apiVersion')}"
                    " (a custom resource may only appear in the components that allow it)"
                )
