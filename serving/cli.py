"""`detserve serve`: the embedded TF Serving-compatible server (development, tests, small single machines).

Flags mirror tensorflow_model_server's (``--rest_api_port`` -> ``--rest-api-port``), and the defaults are the
production configs shipped in serving/: models.config, batching.config (batching on, as in the production
images) and monitoring.config. The configs name container paths (``/models/detector``); ``--repository``
says which local directory stands for ``/models`` (see docs/serving.md, "Where the models are").
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from detserve.client.contract import MAX_IMAGE_PIXELS, MAX_MESSAGE_BYTES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow


@click.command()
@click.option("--repository", type=click.Path(file_okay=False, path_type=Path), default=Path("models"),
              show_default=True, help="Local model repository: stands for the config's /models (the images' mount).")
@click.option("--model-config-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ModelServerConfig text proto  [default: the packaged serving/models.config]")
@click.option("--model-name", default=None,
              help="Serve this one model instead of a config file (as --model_name): latest version of "
                   "REPOSITORY/NAME, or of --model-base-path PATH.")
@click.option("--model-base-path", "base_paths", multiple=True, metavar="NAME=PATH",
              help="Versions of model NAME are under PATH (overrides --repository for it; repeatable). "
                   "With --model-name: just PATH.")
@click.option("--config-root", default="/models", show_default=True,
              help="The base_path prefix in the config that --repository replaces.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address both servers bind.")
@click.option("--port", default=8500, show_default=True, help="gRPC port.")
@click.option("--rest-api-port", default=8501, show_default=True, help="REST port (0: no REST).")
@click.option("--enable-batching/--no-enable-batching", default=True, show_default=True,
              help="Server-side batching (the production images enable it).")
@click.option("--batching-parameters-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="BatchingParameters text proto  [default: the packaged serving/batching.config]")
@click.option("--monitoring-config-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="MonitoringConfig text proto  [default: the packaged serving/monitoring.config]")
@click.option("--file-system-poll-wait-seconds", default=1.0, show_default=True,
              help="How often each model's base path is polled for new versions (0: only at start).")
@click.option("--model-config-file-poll-wait-seconds", default=0.0, show_default=True,
              help="How often the config file is re-read (0: never).")
@click.option("--enable-model-warmup/--no-enable-model-warmup", default=True, show_default=True,
              help="Replay assets.extra/tf_serving_warmup_requests before a version serves.")
@click.option("--allow-version-labels-for-unavailable-models", is_flag=True,
              help="Accept new labels that point at versions not loaded yet (needed for labelled configs at start).")
@click.option("--rest-api-timeout-in-ms", default=30000, show_default=True, help="REST predict timeout (0: none).")
@click.option("--max-message-bytes", default=MAX_MESSAGE_BYTES, show_default=True,
              help="Largest gRPC message / REST body accepted.")
@click.option("--max-image-pixels", default=MAX_IMAGE_PIXELS, show_default=True,
              help="Largest image (height x width) accepted, as a tensor or as encoded bytes.")
@click.option("--tensorflow-intra-op-parallelism", default=0, show_default=True, help="0: TensorFlow's default.")
@click.option("--tensorflow-inter-op-parallelism", default=0, show_default=True, help="0: TensorFlow's default.")
@click.option("--request-threads", default=0, show_default=True,
              help="Threads running unbatched requests (0: 4 x cores).")
@click.option("--drain-timeout-seconds", default=30.0, show_default=True,
              help="On SIGTERM, how long requests in flight may take to finish.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def serve(repository: Path, model_config_file: Path | None, model_name: str | None, base_paths: tuple[str, ...],
          config_root: str, host: str, port: int, rest_api_port: int, enable_batching: bool,
          batching_parameters_file: Path | None, monitoring_config_file: Path | None,
          file_system_poll_wait_seconds: float, model_config_file_poll_wait_seconds: float,
          enable_model_warmup: bool, allow_version_labels_for_unavailable_models: bool, rest_api_timeout_in_ms: int,
          max_message_bytes: int, max_image_pixels: int, tensorflow_intra_op_parallelism: int,
          tensorflow_inter_op_parallelism: int, request_threads: int, drain_timeout_seconds: float,
          log_level: str) -> None:
    """Serve SavedModels over TF Serving's gRPC and REST APIs, configured by serving/*.config."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from detserve.serving import config as cfg
    from detserve.serving.predict import Limits
    from detserve.serving.server import EmbeddedServer, ServerOptions

    try:
        if model_name:
            if model_config_file:
                raise cfg.ConfigError("--model-name and --model-config-file exclude each other")
            plain = [p for p in base_paths if "=" not in p]
            if len(plain) > 1 or len(plain) != len(base_paths):
                raise cfg.ConfigError("with --model-name, give at most one --model-base-path PATH")
            base_path = plain[0] if plain else f"{config_root.rstrip('/')}/{model_name}"
            config = cfg.single_model_config(model_name, base_path)
            overrides = {}
            config_file = None
        else:
            config_file = model_config_file or cfg.packaged_config("models.config")
            config = cfg.load_model_server_config(config_file)
            overrides = cfg.parse_base_path_overrides(base_paths)

        def map_config(proto):
            return cfg.map_base_paths(proto, repository, overrides, config_root)

        local = map_config(config)
        batching = None
        if enable_batching:
            batching = cfg.BatchingOptions.from_proto(
                cfg.load_batching_parameters(batching_parameters_file or cfg.packaged_config("batching.config")))
        monitoring = cfg.load_monitoring_config(monitoring_config_file or cfg.packaged_config("monitoring.config"))
    except cfg.ConfigError as error:
        raise click.ClickException(str(error)) from None

    for model in local.model_config_list.config:
        click.echo(f"model {model.name}: {model.base_path}", err=True)
    options = ServerOptions(
        model_config=local, map_config=map_config, config_file=config_file, host=host, grpc_port=port,
        rest_port=rest_api_port, batching=batching, prometheus_path=cfg.prometheus_path(monitoring),
        file_system_poll_wait_seconds=file_system_poll_wait_seconds,
        model_config_file_poll_wait_seconds=model_config_file_poll_wait_seconds,
        enable_model_warmup=enable_model_warmup,
        allow_version_labels_for_unavailable_models=allow_version_labels_for_unavailable_models,
        rest_api_timeout_ms=rest_api_timeout_in_ms, max_message_bytes=max_message_bytes,
        limits=Limits(max_image_pixels=max_image_pixels), request_threads=request_threads,
        drain_timeout_s=drain_timeout_seconds, intra_op_threads=tensorflow_intra_op_parallelism,
        inter_op_threads=tensorflow_inter_op_parallelism,
    )
    from detserve.serving.errors import ServingError

    try:
        code = EmbeddedServer(options).run()
    except ServingError as error:
        raise click.ClickException(f"{error.code.name}: {error.message}") from None
    except OSError as error:  # a port in use
        raise click.ClickException(str(error)) from None
    sys.exit(code)


if __name__ == "__main__":
    serve()
