"""The flags of `detserve serve`, stated once: each :class:`ServerOptions` field is one flag, with its default
and help text; :func:`click_options` turns the fields into the command's click options.

Flags mirror tensorflow_model_server's (``--rest_api_port`` -> ``--rest-api-port``, the field
``rest_api_port``), and the defaults are the production configs shipped in serving/ (docs/serving.md).
A new flag is a new field here; the server reads it from the options it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import click

from detserve.client.contract import MAX_IMAGE_PIXELS, MAX_MESSAGE_BYTES


def _flag(default, help: str, *decls: str, **click_kwargs):
    """A field that is a click option: ``decls`` when the option is not simply ``--field-name``."""
    return field(default=default, metadata={"help": help, "decls": decls, "click": click_kwargs})


_DIRECTORY = click.Path(file_okay=False, path_type=Path)
_FILE = click.Path(dir_okay=False, path_type=Path)


@dataclass(frozen=True)
class ServerOptions:
    repository: Path = _flag(Path("models"), "Local model repository: stands for the config's /models (the images' "
                             "mount).", type=_DIRECTORY)
    model_config_file: Path | None = _flag(None, "ModelServerConfig text proto  [default: the packaged "
                                           "serving/models.config]", type=_FILE)
    model_name: str | None = _flag(None, "Serve this one model instead of a config file (as --model_name): latest "
                                   "version of REPOSITORY/NAME, or of --model-base-path PATH.")
    base_paths: tuple[str, ...] = _flag((), "Versions of model NAME are under PATH (overrides --repository for it; "
                                        "repeatable). With --model-name: just PATH.", "--model-base-path",
                                        "base_paths", multiple=True, metavar="NAME=PATH")
    config_root: str = _flag("/models", "The base_path prefix in the config that --repository replaces.")
    host: str = _flag("0.0.0.0", "Address both servers bind.")
    port: int = _flag(8500, "gRPC port.")
    rest_api_port: int = _flag(8501, "REST port (0: no REST).")
    enable_batching: bool = _flag(True, "Server-side batching (the production images enable it).",
                                  "--enable-batching/--no-enable-batching")
    batching_parameters_file: Path | None = _flag(None, "BatchingParameters text proto  [default: the packaged "
                                                  "serving/batching.config]", type=_FILE)
    monitoring_config_file: Path | None = _flag(None, "MonitoringConfig text proto  [default: the packaged "
                                                "serving/monitoring.config]", type=_FILE)
    file_system_poll_wait_seconds: float = _flag(1.0, "How often each model's base path is polled for new versions "
                                                 "(0: only at start).")
    model_config_file_poll_wait_seconds: float = _flag(0.0, "How often the config file is re-read (0: never).")
    enable_model_warmup: bool = _flag(True, "Replay assets.extra/tf_serving_warmup_requests before a version "
                                      "serves.", "--enable-model-warmup/--no-enable-model-warmup")
    enable_grpc_healthcheck_service: bool = _flag(True, "Serve grpc.health.v1.Health/Check (for gRPC liveness "
                                                  "probes; the production Deployment enables it in TF Serving).",
                                                  "--enable-grpc-healthcheck-service/"
                                                  "--no-enable-grpc-healthcheck-service")
    allow_version_labels_for_unavailable_models: bool = _flag(
        False, "Accept new labels that point at versions not loaded yet (needed for labelled configs at start).")
    rest_api_timeout_in_ms: int = _flag(30000, "REST predict timeout (0: none).")
    max_message_bytes: int = _flag(MAX_MESSAGE_BYTES, "Largest gRPC message / REST body accepted.")
    max_image_pixels: int = _flag(MAX_IMAGE_PIXELS, "Largest image (height x width) accepted, as a tensor or as "
                                  "encoded bytes.")
    tensorflow_intra_op_parallelism: int = _flag(0, "0: TensorFlow's default.")
    tensorflow_inter_op_parallelism: int = _flag(0, "0: TensorFlow's default.")
    request_threads: int = _flag(0, "Threads running unbatched requests (0: 4 x cores).")
    drain_timeout_seconds: float = _flag(30.0, "On SIGTERM, how long requests in flight may take to finish.")
    log_level: str = _flag("info", "", type=click.Choice(["debug", "info", "warning", "error"]))


def click_options(command: Callable) -> Callable:
    """Decorate ``command`` with one click option per ServerOptions field (in field order)."""
    for spec in reversed(fields(ServerOptions)):
        meta = spec.metadata
        decls = meta["decls"] or ("--" + spec.name.replace("_", "-"),)
        kwargs = dict(meta["click"])
        if spec.default is MISSING:
            raise TypeError(f"ServerOptions.{spec.name} needs a default: every flag has one")
        kwargs["default"] = spec.default
        plain_switch = isinstance(spec.default, bool) and "/" not in decls[0]
        if plain_switch:
            kwargs["is_flag"] = True
        if spec.default not in (None, ()) and not plain_switch:
            kwargs["show_default"] = True
        if meta["help"]:
            kwargs["help"] = meta["help"]
        command = click.option(*decls, **kwargs)(command)
    return command
