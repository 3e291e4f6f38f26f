"""A TF Serving model repository on disk: ``<repository>/<name>/<version>/``; detserve writes positive versions.

TF Serving's file-system source polls ``<base_path>`` and treats every child directory whose name is an
integer as a version; anything else (``.tmp-export-*``) is ignored. So an export is built in a hidden
temporary directory *inside* ``<repository>/<name>/`` (same file system) and published with one
``rename``: a polling server sees either no version or a complete one, and a failed export leaves nothing
behind. Pruning renames a version out of sight first, then deletes it.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from detserve.client.contract import FIRST_VERSION, version_dirs

TEMP_PREFIX = ".tmp-export-"
PRUNE_PREFIX = ".tmp-prune-"


class RepositoryError(ValueError):
    """A version that cannot be written or a serving config that cannot be read."""


def list_versions(model_dir: Path | str) -> list[int]:
    """The version numbers under ``<repository>/<name>/``, ascending: what TF Serving would load, 0 included
    (detserve.client.contract.version_dirs)."""
    model_dir = Path(model_dir)
    return sorted(version_dirs(model_dir)) if model_dir.is_dir() else []


def version_dir(model_dir: Path | str, version: int) -> Path:
    return Path(model_dir) / str(version)


def next_version(model_dir: Path | str) -> int:
    """One more than the highest version present, FIRST_VERSION (1) for an empty repository."""
    versions = list_versions(model_dir)
    return max(versions[-1] + 1, FIRST_VERSION) if versions else FIRST_VERSION


def check_version_free(model_dir: Path | str, version: int) -> None:
    """Refuse a requested version that exists (also as ``01``, which TF Serving reads as 1) or is not positive."""
    if version < FIRST_VERSION:
        raise RepositoryError(f"version must be a positive integer (TF Serving's version directories), got {version}")
    if version in list_versions(model_dir):
        raise RepositoryError(f"version {version} already exists in {model_dir}; exports never overwrite a version")


def directory_size(path: Path | str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_dirs(model_dir: Path | str) -> list[Path]:
    """Delete temporary directories left by exports whose process died (``kill -9``); returns them."""
    removed = []
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return removed
    for child in model_dir.iterdir():
        match = re.fullmatch(rf"(?:{re.escape(TEMP_PREFIX)}|{re.escape(PRUNE_PREFIX)})(\d+)-[0-9a-f]+", child.name)
        if match and child.is_dir() and not _pid_alive(int(match[1])):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


@contextlib.contextmanager
def staging_dir(model_dir: Path | str) -> Iterator[Path]:
    """A fresh ``<model_dir>/.tmp-export-<pid>-<hex>`` (created, absent on entry), removed on exit unless
    it was published (renamed away) in the meantime."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        yield path
    finally:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def locked(model_dir: Path | str) -> Iterator[None]:
    """An exclusive flock on ``<repository>/<name>/`` itself, so two exports cannot pick the same version.

    Best effort: where the file system refuses to lock a directory (some NFS volumes), the export goes on
    unlocked; ``publish`` still refuses to rename onto an existing version.
    """
    fd = os.open(model_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_tree(path: Path) -> None:
    """Flush every file and directory under ``path`` so the renamed version survives a crash intact."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, model_dir: Path | str, version: int | None = None) -> tuple[int, Path]:
    """Rename a complete staged SavedModel to ``<model_dir>/<version>`` (the next free one if None).

    The version is chosen under the directory lock, right before the rename, so concurrent exports get
    distinct versions; an explicit version that appeared meanwhile is refused, never overwritten.
    """
    model_dir = Path(model_dir)
    _fsync_tree(staged)
    with locked(model_dir):
        if version is None:
            version = next_version(model_dir)
        check_version_free(model_dir, version)
        target = version_dir(model_dir, version)
        if target.exists():  # e.g. a plain file named like a version
            raise RepositoryError(f"{target} exists; exports never overwrite a version")
        os.rename(staged, target)
        _fsync_dir(model_dir)
    return version, target


# ------------------------------------------------------------------------------------------------
# Versions a serving config refers to, which --keep never removes.


@dataclass
class ServingReferences:
    """Versions of one model that TF Serving configs pin (``specific``) or label, per config file."""

    pinned: dict[int, list[str]] = field(default_factory=dict)  # version -> ["models.canary.config: specific", ...]
    latest_num_versions: int | None = None  # the largest `latest { num_versions }` for this model, if any
    files: list[Path] = field(default_factory=list)

    @property
    def protected(self) -> set[int]:
        return set(self.pinned)


def serving_references(config_paths: Sequence[Path | str], model_name: str) -> ServingReferences:
    """Parse TF Serving ModelServerConfig text protos and collect what they pin or label for ``model_name``.

    Raises RepositoryError for a file that does not parse: pruning must not guess.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    references = ServingReferences()
    for path in config_paths:
        path = Path(path)
        config = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(path.read_text(), config)
        except (OSError, text_format.ParseError) as error:
            raise RepositoryError(f"cannot read serving config {path}: {error}") from error
        references.files.append(path)
        for model in config.model_config_list.config:
            # The model itself, or another model over its directory (the canary candidate, k8s/rollout.py).
            if model.name != model_name and PurePosixPath(model.base_path).name != model_name:
                continue
            policy = model.model_version_policy
            if policy.HasField("specific"):
                for v in policy.specific.versions:
                    references.pinned.setdefault(int(v), []).append(f"{path.name}: specific version")
            if policy.HasField("latest"):
                references.latest_num_versions = max(references.latest_num_versions or 0, policy.latest.num_versions)
            for label, v in model.version_labels.items():
                references.pinned.setdefault(int(v), []).append(f"{path.name}: label {label!r}")
    return references


@dataclass
class PruneResult:
    removed: list[int]
    kept: list[int]
    protected: dict[int, list[str]]  # older than --keep but referenced by a serving config


def prune(model_dir: Path | str, keep: int, references: ServingReferences | None = None) -> PruneResult:
    """Delete all but the ``keep`` highest versions, except versions a serving config pins or labels."""
    if keep < 1:
        raise RepositoryError(f"--keep must be at least 1, got {keep}")
    model_dir = Path(model_dir)
    references = references or ServingReferences()
    with locked(model_dir):
        directories = version_dirs(model_dir)  # as spelled on disk ("007")
        versions = sorted(directories)
        newest = set(versions[-keep:])
        removed, protected = [], {}
        for version in versions:
            if version in newest:
                continue
            if version in references.pinned:
                protected[version] = references.pinned[version]
                continue
            # Disappear atomically (rename), then delete at leisure.
            doomed = model_dir / f"{PRUNE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
            os.rename(directories[version], doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(version)
    return PruneResult(removed=removed, kept=list_versions(model_dir), protected=protected)
