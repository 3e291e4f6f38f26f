"""Export a trained detector as a new, verified version of a TF Serving model repository.

Two sources (detserve.export.sources):

- ``export_checkpoint``: a TFOD2 training checkpoint + pipeline.config, rebuilt with TFOD2's model
  builder and traced with a dynamic batch dimension (TFOD2's exporter fixes it at 1).
- ``adopt_saved_model``: a SavedModel written by TFOD2's exporter (``exporter_main_v2``); a source fixed
  at batch 1 is run once per image of a batch.

Both write ``<repository>/<name>/<version>/`` (saved_model.pb, variables/, assets/label_map.pbtxt,
assets.extra/tf_serving_warmup_requests) through a hidden staging directory that is renamed into place
only after the staged SavedModel passed verification in a fresh process (detserve.export.verify). This
module is the sequence; each step is its own module. It is also where docs/export.md's Python API is
imported from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from detserve.client.contract import DEFAULT_SIGNATURE, label_map_file

from . import repository as repo
from .errors import ExportError
from .gate import GateResult, QualityGate
from .pipeline import read_pipeline_config
from .signature_defs import check_signatures, describe_signatures, model_input_size, read_signature_defs
from .sources import (
    BuiltModel,
    Echo,
    checkpoint_builder,
    find_pipeline_config,
    find_saved_model,
    saved_model_builder,
)
from .summary import format_summary
from .verify import failed_checks, verify_in_subprocess
from .warmup import WarmupInfo, warmup_batch_sizes, write_warmup_file

# The Python API of docs/export.md. format_summary, describe_signatures, read_signature_defs and
# model_input_size live in .summary and .signature_defs and are re-exported so that the documented
# `from detserve.export.exporter import ...` keeps working.
__all__ = [
    "BuiltModel", "ExportError", "ExportResult", "GateResult", "QualityGate", "adopt_saved_model", "checkpoint_builder",
    "default_batching_configs", "default_serving_configs", "describe_signatures", "export_checkpoint", "format_summary",
    "model_input_size", "read_signature_defs",
]


@dataclass
class ExportResult:
    version: int
    path: Path
    size_bytes: int
    source: str
    signatures: dict[str, dict]
    input_size: tuple[int, int] | None
    batch_mapped: bool
    warmup: WarmupInfo
    verification: dict
    pruned: list[int] = field(default_factory=list)
    protected: dict[int, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    gate: GateResult | None = None  # the quality gate's metrics, when the export had one


def _silent(message: str) -> None:
    pass


# ------------------------------------------------------------------------------------------------
# Defaults from the serving/ folder (package data of detserve.serving, so they resolve from any cwd).


def _serving_dir() -> Path | None:
    try:
        return Path(str(resources.files("detserve.serving")))
    except (ModuleNotFoundError, TypeError):
        return None


def default_serving_configs() -> list[Path]:
    """serving/models*.config: every ModelServerConfig whose pins and labels --keep must respect."""
    directory = _serving_dir()
    return sorted(directory.glob("models*.config")) if directory else []


# The shipped batching config of each kind of server (k8s/overlays/cpu and gpu, serving/Dockerfile*).
BATCHING_CONFIGS = {"cpu": "batching.config", "gpu": "batching-gpu.config"}


def default_batching_configs(servers: str = "all") -> list[Path]:
    """The shipped batching configs of the servers that will load the version: ``cpu``, ``gpu`` or ``all``
    (serving/batching.config and serving/batching-gpu.config; the warmup then stops at the smaller maximum)."""
    if servers != "all" and servers not in BATCHING_CONFIGS:
        raise ValueError(f"servers must be all, {' or '.join(BATCHING_CONFIGS)}; got {servers!r}")
    directory = _serving_dir()
    names = BATCHING_CONFIGS.values() if servers == "all" else [BATCHING_CONFIGS[servers]]
    return [directory / name for name in names] if directory else []


# ------------------------------------------------------------------------------------------------
# The export.


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _export(build: Callable[[Path], BuiltModel], repository: Path | str, name: str, version: int | None,
            keep: int | None, serving_configs: Sequence[Path] | None, batching_configs: Sequence[Path] | None,
            echo: Echo | None, measure_latency: bool = True, gate: QualityGate | None = None,
            warmup_batches: str = "all") -> ExportResult:
    """Check the arguments, build into a staging directory, add the label map and the warmup, verify,
    pass the quality gate (if any), publish, prune: the sequence docs/export.md describes."""
    echo = echo or _silent
    if not _NAME.fullmatch(name) or name.isdigit():
        raise ExportError(f"model name {name!r} must be a plain directory name (letters, digits, _ . -; not a number)")
    model_dir = Path(repository) / name
    try:
        if version is not None:
            repo.check_version_free(model_dir, version)
        references = None
        if keep is not None:
            if keep < 1:
                raise repo.RepositoryError(f"--keep must be at least 1, got {keep}")
            references = repo.serving_references(
                default_serving_configs() if serving_configs is None else serving_configs, name)
        sizes = warmup_batch_sizes(default_batching_configs() if batching_configs is None else batching_configs,
                                   warmup_batches)
    except (repo.RepositoryError, ValueError) as error:
        raise ExportError(str(error)) from error

    for stale in repo.remove_stale_temp_dirs(model_dir):
        echo(f"removed {stale}, left by an export that was killed")
    with repo.staging_dir(model_dir) as staged:
        built = build(staged)
        label_map = label_map_file(staged)
        label_map.parent.mkdir(exist_ok=True)
        label_map.write_text(built.label_map_text)
        if gate is not None:
            gate.check_classes(staged)  # a class mismatch is known now: no need to wait for the verification
        warmup = write_warmup_file(staged, name, sizes)
        signatures = check_signatures(staged)
        echo("verifying in a fresh process (plain TensorFlow)")
        verification = verify_in_subprocess(staged, built, measure_latency)
        if not verification.get("ok"):
            raise ExportError(f"verification failed, nothing published: {failed_checks(verification)}")
        # On the verified candidate, before the rename: a refusal (an ExportError) removes the staging dir.
        gate_result = gate(staged, echo) if gate is not None else None
        try:
            version, path = repo.publish(staged, model_dir, version)
        except repo.RepositoryError as error:
            raise ExportError(str(error)) from error

    notes = list(built.notes) + list(warmup.notes)
    warmup.path = path / warmup.path.relative_to(staged)
    result = ExportResult(version=version, path=path, size_bytes=repo.directory_size(path), source=built.source,
                          signatures=signatures, input_size=built.input_size, batch_mapped=built.batch_mapped,
                          warmup=warmup, verification=verification, notes=notes, gate=gate_result)
    if keep is not None:
        pruned = repo.prune(model_dir, keep, references)
        result.pruned, result.protected = pruned.removed, pruned.protected
        if references.latest_num_versions and keep < references.latest_num_versions:
            result.notes.append(f"--keep {keep} is below the serving config's latest {{ num_versions: "
                                f"{references.latest_num_versions} }}: the server has no previous version to fall back to")
    return result


def export_checkpoint(
    pipeline_config: Path | str,
    checkpoint: Path | str | None = None,
    repository: Path | str = "models",
    name: str = "detector",
    *,
    version: int | None = None,
    keep: int | None = None,
    label_map: Path | str | None = None,
    serving_configs: Sequence[Path] | None = None,
    batching_configs: Sequence[Path] | None = None,
    echo: Echo | None = None,
    measure_latency: bool = True,
    gate: QualityGate | None = None,
    warmup_batches: str = "all",
) -> ExportResult:
    """Export a TFOD2 checkpoint (prefix, or a directory: its latest; default: pipeline.config's directory).

    ``serving_configs``/``batching_configs`` default to serving/models*.config and the two batching
    configs; ``warmup_batches`` ``"smallest"``/``"largest"`` warms only the smallest/largest batch size they form
    (CPU servers: detserve.export.warmup). ``gate`` (detserve.export.gate.prepare_gate): evaluate the verified candidate and refuse it below
    the gate's floors. Raises ExportError (nothing published) on any failure, including verification and the gate.
    """
    pipeline = read_pipeline_config(pipeline_config)  # the one parse of this export
    checkpoint = checkpoint if checkpoint is not None else pipeline.path.parent
    builder = checkpoint_builder(pipeline, checkpoint, Path(label_map) if label_map else None, echo or _silent)
    return _export(builder, repository, name, version, keep, serving_configs, batching_configs, echo, measure_latency,
                   gate, warmup_batches)


def adopt_saved_model(
    source: Path | str,
    repository: Path | str = "models",
    name: str = "detector",
    *,
    version: int | None = None,
    keep: int | None = None,
    label_map: Path | str | None = None,
    pipeline_config: Path | str | None = None,
    signature: str = DEFAULT_SIGNATURE,
    serving_configs: Sequence[Path] | None = None,
    batching_configs: Sequence[Path] | None = None,
    echo: Echo | None = None,
    measure_latency: bool = True,
    gate: QualityGate | None = None,
    warmup_batches: str = "all",
) -> ExportResult:
    """Bring a SavedModel made by TFOD2's exporter into the repository with detserve's signatures.

    ``pipeline_config`` defaults to the one TFOD2's exporter wrote beside ``saved_model/``, if any.
    """
    source = Path(source)
    if not source.exists():
        raise ExportError(f"SavedModel not found: {source}")
    saved_model = find_saved_model(source)  # fails before anything is built
    config_path = pipeline_config or find_pipeline_config(saved_model)
    pipeline = read_pipeline_config(config_path) if config_path else None  # the one parse of this export
    builder = saved_model_builder(saved_model, Path(label_map) if label_map else None, pipeline, signature,
                                  echo or _silent)
    return _export(builder, repository, name, version, keep, serving_configs, batching_configs, echo, measure_latency,
                   gate, warmup_batches)
