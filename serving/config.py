"""The embedded server's configuration: the production text protos in serving/, and where the models are.

The configs are read with the same parsers ``tests/test_serving_configs.py`` validates them with
(``detserve.serving.tfs_config``), never restated. What the production images know as ``/models/<name>``
(their mount point) is a local directory here; :func:`map_base_paths` rewrites each model's ``base_path``:

1. ``--model-base-path NAME=PATH`` wins for that model;
2. otherwise, with ``--repository DIR``, a base_path under the container root (``/models``) keeps its
   path below that root, under DIR: ``/models/detector`` -> ``DIR/detector``;
3. a relative base_path is taken relative to the repository (or the working directory without one);
4. any other absolute path is used as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

from . import tfs_config
from .options import ServerOptions

CONTAINER_ROOT = "/models"

# TF Serving's defaults for fields a BatchingParameters file leaves out (SharedBatchScheduler::QueueOptions and
# BatchingSession): input limit 1000, no timeout, 10 enqueued batches, one batch thread per core.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10
DEFAULT_THREAD_POOL_NAME = "batch_threads"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message names the file or flag."""


def packaged_config(name: str) -> Path:
    """One of the production configs shipped in this package (serving/*.config)."""
    path = Path(str(resources.files("detserve.serving").joinpath(name)))
    if not path.is_file():
        raise ConfigError(f"{name} is not in the detserve.serving package ({path})")
    return path


def _parse(path: Path | str, message_type):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tfs_config.parse_text(path.read_text(encoding="utf-8"), message_type, str(path))
    except Exception as error:  # text_format.ParseError, UnicodeDecodeError
        raise ConfigError(str(error)) from None


def load_model_server_config(path: Path | str) -> tfs_config.ModelServerConfig:
    config = _parse(path, tfs_config.ModelServerConfig)
    check_model_server_config(config, str(path))
    return config


def check_model_server_config(config, source: str = "config") -> None:
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError(f"{source}: only model_config_list is supported (as by HandleReloadConfigRequest)")
    names = [model.name for model in config.model_config_list.config]
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigError(f"{source}: a model has no name")
        if not model.base_path:
            raise ConfigError(f"{source}: model {model.name!r} has no base_path")
        if model.model_platform and model.model_platform != "tensorflow":
            raise ConfigError(f"{source}: model {model.name!r}: platform {model.model_platform!r} is not supported "
                              "(only 'tensorflow')")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{source}: model names must be unique, repeated: {', '.join(duplicates)}")


def single_model_config(name: str, base_path: str) -> tfs_config.ModelServerConfig:
    """What ``tensorflow_model_server --model_name --model_base_path`` serves: one model, latest version."""
    config = tfs_config.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def load_batching_parameters(path: Path | str):
    """BatchingParameters checked by TF Serving's start-up rules (``tfs_config.check_batching``) and for what
    the embedded server implements: large-batch splitting and variable-length padding are not (TF Serving has
    them; no config of this repository uses them)."""
    params = _parse(path, tfs_config.BatchingParameters)
    problems = tfs_config.check_batching(params, str(path))
    if params.pad_variable_length_inputs:
        problems.append(f"{path}: pad_variable_length_inputs: true is not supported by detserve serve (it merges "
                        "only equally shaped requests); use TensorFlow Serving for it")
    if params.enable_large_batch_splitting.value:
        problems.append(f"{path}: enable_large_batch_splitting is not supported by detserve serve (a request "
                        "larger than max_batch_size is rejected); use TensorFlow Serving for it")
    if problems:
        raise ConfigError("; ".join(problems))
    return params


def load_monitoring_config(path: Path | str):
    return _parse(path, tfs_config.MonitoringConfig)


def parse_base_path_overrides(values) -> dict[str, str]:
    """``["detector=models/detector"]`` -> ``{"detector": "models/detector"}``."""
    overrides = {}
    for value in values or ():
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--model-base-path {value!r}: expected NAME=PATH")
        overrides[name] = path
    return overrides


def map_base_path(base_path: str, repository: Path | str | None, container_root: str = CONTAINER_ROOT) -> str:
    """A config's base_path as a local path (rules 2-4 of the module docstring)."""
    root = PurePosixPath(container_root)
    path = PurePosixPath(base_path)
    if repository is not None:
        if path.is_absolute():
            if path == root or root in path.parents:
                return str(Path(repository) / path.relative_to(root))
            return base_path
        return str(Path(repository) / base_path)
    return base_path if path.is_absolute() else str(Path.cwd() / base_path)


def map_base_paths(config, repository: Path | str | None, overrides: dict[str, str] | None = None,
                   container_root: str = CONTAINER_ROOT):
    """A copy of ``config`` whose base paths are local directories; unknown override names are an error."""
    mapped = type(config)()
    mapped.CopyFrom(config)
    overrides = dict(overrides or {})
    for model in mapped.model_config_list.config:
        if model.name in overrides:
            model.base_path = os.fspath(Path(overrides.pop(model.name)).absolute())
        else:
            model.base_path = os.fspath(Path(map_base_path(model.base_path, repository, container_root)).absolute())
    if overrides:
        raise ConfigError(f"--model-base-path names models the config does not have: {', '.join(sorted(overrides))}")
    return mapped


@dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters with TF Serving's defaults filled in (times in seconds)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_s: float = 0.0
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    thread_pool_name: str = DEFAULT_THREAD_POOL_NAME

    def padded_size(self, size: int) -> int:
        """The smallest allowed batch size >= size (size itself without allowed_batch_sizes)."""
        for allowed in self.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size

    @classmethod
    def from_proto(cls, params) -> BatchingOptions:
        """Options from BatchingParameters that :func:`load_batching_parameters` has checked."""
        def value(name, default):
            return getattr(params, name).value if params.HasField(name) else default

        return cls(
            max_batch_size=value("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
            batch_timeout_s=value("batch_timeout_micros", 0) / 1e6,
            max_enqueued_batches=value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES),
            num_batch_threads=value("num_batch_threads", os.cpu_count() or 1),
            allowed_batch_sizes=tuple(params.allowed_batch_sizes),
            thread_pool_name=value("thread_pool_name", DEFAULT_THREAD_POOL_NAME),
        )


def prometheus_path(monitoring) -> str | None:
    """The metrics path of a MonitoringConfig, or None when Prometheus export is off."""
    if monitoring is None or not monitoring.prometheus_config.enable:
        return None
    return monitoring.prometheus_config.path or DEFAULT_PROMETHEUS_PATH


def _same(config):
    return config


@dataclass(frozen=True)
class ServingConfig:
    """What the config flags of :class:`ServerOptions` resolve to."""

    model_config: object  # ModelServerConfig with local base paths
    map_config: Callable = _same  # for configs that arrive later (reload RPC, config polling)
    config_file: Path | None = None  # re-read every --model-config-file-poll-wait-seconds
    batching: BatchingOptions | None = None  # None: batching off
    prometheus_path: str | None = None  # None: no metrics page


def serving_config(options: ServerOptions) -> ServingConfig:
    """Read the config files the options name (the packaged ones by default); ConfigError names a bad one."""
    if options.model_name:
        if options.model_config_file:
            raise ConfigError("--model-name and --model-config-file exclude each other")
        plain = [p for p in options.base_paths if "=" not in p]
        if len(plain) > 1 or len(plain) != len(options.base_paths):
            raise ConfigError("with --model-name, give at most one --model-base-path PATH")
        base_path = plain[0] if plain else f"{options.config_root.rstrip('/')}/{options.model_name}"
        config = single_model_config(options.model_name, base_path)
        overrides: dict[str, str] = {}
        config_file = None
    else:
        config_file = options.model_config_file or packaged_config("models.config")
        config = load_model_server_config(config_file)
        overrides = parse_base_path_overrides(options.base_paths)

    def map_config(proto):
        return map_base_paths(proto, options.repository, overrides, options.config_root)

    batching = None
    if options.enable_batching:
        batching = BatchingOptions.from_proto(load_batching_parameters(
            options.batching_parameters_file or packaged_config("batching.config")))
    monitoring = load_monitoring_config(options.monitoring_config_file or packaged_config("monitoring.config"))
    return ServingConfig(map_config(config), map_config, config_file, batching, prometheus_path(monitoring))

