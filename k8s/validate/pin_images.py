"""`make pin-images`: write the registry's current digest of every tagged image into the kustomizations' `images:`.

    python -m k8s.validate.pin_images [--root DIR] [--check] [--registry-api REGISTRY=URL ...]

For each `images:` entry (name, newName, newTag) under k8s/, the digest of the tag is asked from its registry with
the Docker Registry HTTP API v2 (HEAD /v2/<repository>/manifests/<tag>, anonymous bearer token when the registry
asks for one, as Docker Hub does) and written as the entry's `digest:`; kustomize then renders `name:tag@sha256:...`.
The digest of a multi-architecture tag is that of its index, so every node still pulls its own architecture.
Entries under registry.invalid (images you build yourself) are skipped. Only the `digest:` lines change: comments and
layout stay. `--check` changes nothing and exits 1 if a digest is missing or differs from the registry's (a moved tag).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from .images import DOCKER_HUB, parse_reference

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
# Docker Hub's API lives on another host than its image names.
REGISTRY_API_HOSTS = {DOCKER_HUB: "registry-1.docker.io"}
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
TIMEOUT_SECONDS = 20


class PinError(RuntimeError):
    """A digest that could not be obtained; the message names the image and the registry's answer."""


@dataclass
class ImageEntry:
    kustomization: Path
    name: str  # the entry's `name:`, what it matches in the manifests
    image: str  # newName or name
    tag: str
    digest: str | None


def image_entries(root: Path) -> Iterator[ImageEntry]:
    for path in sorted((root / "k8s").rglob("kustomization.yaml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for entry in document.get("images") or []:
            if "newTag" in entry:
                yield ImageEntry(
                    path,
                    entry["name"],
                    entry.get("newName", entry["name"]),
                    str(entry["newTag"]),
                    entry.get("digest"),
                )


def _bearer_token(challenge: str, session: requests.Session) -> str:
    """Answer a `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge anonymously."""
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    if not challenge.lower().startswith("bearer") or "realm" not in fields:
        raise PinError(f"unsupported authentication challenge {challenge!r}")
    params = {k: v for k, v in fields.items() if k in ("service", "scope")}
    response = session.get(fields["realm"], params=params, timeout=TIMEOUT_SECONDS)
    response.raise_for_status()
    body = response.json()
    return body.get("token") or body["access_token"]


def registry_digest(
    image: str, tag: str, api: dict[str, str] | None = None, session: requests.Session | None = None
) -> str:
    """The digest the registry serves for image:tag (HEAD of the manifest, `Docker-Content-Digest`).

    `api` maps a registry (docker.io, ghcr.io, ...) to the base URL of its API when that is not https://<registry>:
    a pull-through mirror, or a test registry."""
    reference = parse_reference(f"{image}:{tag}")
    default = f"https://{REGISTRY_API_HOSTS.get(reference.registry, reference.registry)}"
    base = (api or {}).get(reference.registry, default).rstrip("/")
    url = f"{base}/v2/{reference.repository}/manifests/{tag}"
    session = session or requests.Session()
    headers = {"Accept": MANIFEST_TYPES}
    try:
        response = session.head(url, headers=headers, timeout=TIMEOUT_SECONDS)
        if response.status_code == 401:
            token = _bearer_token(response.headers.get("WWW-Authenticate", ""), session)
            response = session.head(
                url, headers={**headers, "Authorization": f"Bearer {token}"}, timeout=TIMEOUT_SECONDS
            )
    except (requests.RequestException, KeyError, ValueError) as exc:
        raise PinError(f"{image}:{tag}: {url}: {exc}") from exc
    if response.status_code != 200:
        raise PinError(f"{image}:{tag}: {url} answered HTTP {response.status_code}")
    digest = response.headers.get("Docker-Content-Digest", "")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise PinError(f"{image}:{tag}: {url} gave no sha256 Docker-Content-Digest (got {digest!r})")
    return digest


def write_digest(kustomization: Path, name: str, digest: str) -> None:
    """Set `digest:` of the images entry `name` in place, keeping every other line as it is."""
    lines = kustomization.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(
        (
            i
            for i, line in enumerate(lines)
            if re.fullmatch(rf"\s*- name: ['\"]?{re.escape(name)}['\"]?\s*", line)
        ),
        None,
    )
    if start is None:
        raise PinError(f"{kustomization}: no images entry `- name: {name}`")
    indent = " " * (len(lines[start]) - len(lines[start].lstrip()) + 2)
    end = start + 1
    while end < len(lines) and lines[end].startswith(indent) and not lines[end].lstrip().startswith("#"):
        end += 1
    entry = list(range(start + 1, end))
    existing = [i for i in entry if lines[i].lstrip().startswith("digest:")]
    if existing:
        lines[existing[0]] = f"{indent}digest: {digest}\n"
    else:
        lines.insert(end, f"{indent}digest: {digest}\n")
    kustomization.write_text("".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m k8s.validate.pin_images", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--root", type=Path, default=REPOSITORY_ROOT)
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a digest is missing or moved"
    )
    parser.add_argument(
        "--registry-api",
        action="append",
        default=[],
        metavar="REGISTRY=URL",
        help="ask REGISTRY's API at URL (a pull-through mirror or a test registry), e.g. "
        "docker.io=https://mirror.example.com",
    )
    args = parser.parse_args(argv)
    api, failures, stale = {}, 0, 0
    for mapping in args.registry_api:
        registry, sep, url = mapping.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            parser.error(f"--registry-api {mapping!r}: expected REGISTRY=http(s)://HOST[:PORT]")
        api[registry] = url
    session = requests.Session()
    for entry in image_entries(args.root):
        where = f"{entry.kustomization.relative_to(args.root)}: {entry.image}:{entry.tag}"
        if parse_reference(entry.image).placeholder:
            print(f"pin-images: {where}: skipped (a placeholder for an image you build)")
            continue
        try:
            digest = registry_digest(entry.image, entry.tag, api, session)
        except PinError as exc:
            print(f"pin-images: {exc}", file=sys.stderr)
            failures += 1
            continue
        if digest == entry.digest:
            print(f"pin-images: {where}: {digest} (unchanged)")
        elif args.check:
            print(
                f"pin-images: {where}: registry has {digest}, kustomization has {entry.digest}",
                file=sys.stderr,
            )
            stale += 1
        else:
            write_digest(entry.kustomization, entry.name, digest)
            print(f"pin-images: {where}: {digest} (written)")
    return 1 if failures or stale else 0


if __name__ == "__main__":
    sys.exit(main())
