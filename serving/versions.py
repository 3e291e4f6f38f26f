"""Which versions of a model the server should serve (the repository scan, the version policy), and the states
a version goes through.

As TF Serving's file-system source: every child directory of ``base_path`` whose name is a non-negative integer
is a version (``00007`` is version 7; hidden ``.tmp-export-*`` directories and files are ignored; the rule is
detserve.client.contract.version_dirs). The policy
(``ModelConfig.model_version_policy``) picks the *aspired* versions among them:

- ``latest { num_versions: N }`` (the default, N=1): the N highest version numbers present;
- ``all {}``: every version present;
- ``specific { versions: [...] }``: those listed that are present.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from detserve.client.contract import version_dirs

from .errors import ServingError


class State(enum.IntEnum):
    """ModelVersionStatus.State values (tensorflow_serving/apis/get_model_status.proto)."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass
class VersionStatus:
    version: int
    state: State
    error: ServingError | None = None  # why an END version failed to load (None: OK)


class ScanError(OSError):
    """The base path cannot be listed (missing, not a directory, unreadable)."""


def scan_versions(base_path: Path | str) -> dict[int, Path]:
    """``{version: directory}`` under ``base_path`` (detserve.client.contract.version_dirs). Raises ScanError
    if base_path cannot be listed."""
    base_path = Path(base_path)
    try:
        return version_dirs(base_path)
    except FileNotFoundError:
        raise ScanError(f"No versions of servable found under base path {base_path}: "
                        "the directory does not exist") from None
    except NotADirectoryError:
        raise ScanError(f"base path {base_path} is not a directory") from None
    except OSError as error:
        raise ScanError(f"cannot list base path {base_path}: {error}") from None


@dataclass(frozen=True)
class VersionPolicy:
    kind: str  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def from_model_config(cls, model_config) -> VersionPolicy:
        policy = model_config.model_version_policy
        which = policy.WhichOneof("policy_choice")
        if which == "all":
            return cls("all")
        if which == "specific":
            return cls("specific", versions=tuple(sorted(set(policy.specific.versions))))
        if which == "latest":
            return cls("latest", num_versions=max(1, policy.latest.num_versions or 1))
        return cls("latest", num_versions=1)

    def aspired(self, available: set[int] | dict[int, object]) -> set[int]:
        present = set(available)
        if self.kind == "all":
            return present
        if self.kind == "specific":
            return present & set(self.versions)
        return set(sorted(present)[-self.num_versions:])


def fingerprint(version_dir: Path | str) -> tuple:
    """Names, sizes and modification times of every file of a version: a failed load is retried once this changes
    (an export still being copied in place, or a broken version fixed by hand)."""
    version_dir = Path(version_dir)
    items = []
    for root, dirs, files in os.walk(version_dir):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            items.append((str(path.relative_to(version_dir)), stat.st_size, stat.st_mtime_ns))
    try:
        items.append(("", 0, version_dir.stat().st_mtime_ns))
    except OSError:
        pass
    return tuple(items)
