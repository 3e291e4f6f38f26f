"""Container image references: parse them as Docker does, and check that what a target deploys is pinned by digest.

A tag can be moved to other bytes by whoever controls the repository; a digest cannot. Images are pinned in the
kustomizations' `images:` entries (`newTag` for people, `digest` for the kubelet), which kustomize renders as
`name:tag@sha256:...`; `make pin-images` (k8s/validate/pin_images.py) fills the digests in from the registries.
Images the project cannot know (the training image, the web demo's) carry a name under `registry.invalid`, a domain
that never resolves (RFC 2606), so a Job started without setting it fails to pull with that name in the event.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from .objects import describe, pod_containers

DOCKER_HUB = "docker.io"
PLACEHOLDER_REGISTRY = "registry.invalid"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageReference:
    registry: str  # docker.io for Docker Hub
    repository: str  # library/busybox for an official image
    tag: str | None
    digest: str | None

    @property
    def pinned(self) -> bool:
        return self.digest is not None and DIGEST.fullmatch(self.digest) is not None

    @property
    def placeholder(self) -> bool:
        return self.registry == PLACEHOLDER_REGISTRY


def parse_reference(reference: str) -> ImageReference:
    """Split `[registry/]repository[:tag][@digest]` with Docker's rules: the first path part is a registry only if
    it has a '.' or ':' or is 'localhost'; a Docker Hub name without a namespace lives under library/."""
    rest, _, digest = reference.partition("@")
    name, tag = rest, None
    if ":" in rest.rpartition("/")[2]:
        name, _, tag = rest.rpartition(":")
    first, _, remainder = name.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
    else:
        registry, repository = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not repository or (tag is not None and not tag):
        raise ValueError(f"image {reference!r}: not a valid reference")
    return ImageReference(registry, repository, tag, digest or None)


def image_tag(container: dict) -> str:
    """The tag of a container's image ('' if none), also when it is pinned as name:tag@sha256:..."""
    try:
        return parse_reference(str(container.get("image", ""))).tag or ""
    except ValueError:
        return ""


def container_images(objects: list[dict]) -> Iterator[tuple[dict, str, str]]:
    """(object, container name, image) for every container and init container of every Pod template."""
    for obj in objects:
        for container in pod_containers(obj):
            yield obj, container.get("name", "?"), container.get("image", "")


def check_images(objects: list[dict], require_digests: bool) -> tuple[list[str], list[str]]:
    """(errors, notes): a malformed or placeholder image is an error only when digests are required (deploying);
    an image by tag alone is a note for validation and an error for deployment."""
    errors, notes = [], []
    for obj, container, image in container_images(objects):
        where = f"{describe(obj)} container {container}"
        try:
            reference = parse_reference(image)
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if reference.placeholder:
            message = (
                f"{where}: image {image} is a placeholder; build and push your own image, then set it in "
                "the kustomization's `images:` (kustomize edit set image <name>=<registry>/<repo>@sha256:...)"
            )
            (errors if require_digests else notes).append(message)
        elif not reference.pinned:
            message = f"{where}: image {image} is not pinned by digest (make pin-images)"
            (errors if require_digests else notes).append(message)
    return errors, notes
