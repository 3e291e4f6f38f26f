"""`detserve serve`: the embedded TF Serving-compatible server (development, tests, small single machines).

The flags are the fields of ``options.ServerOptions`` (their one home; docs/serving.md lists them). The configs
name container paths (``/models/detector``); ``--repository`` says which local directory stands for ``/models``
(see docs/serving.md, "Where the models are").
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

from .options import ServerOptions, click_options


@click.command()
@click_options
def serve(**flags) -> None:
    """Serve SavedModels over TF Serving's gRPC and REST APIs, configured by serving/*.config."""
    options = ServerOptions(**flags)
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from .config import ConfigError, serving_config
    from .errors import ServingError
    from .server import EmbeddedServer

    try:
        config = serving_config(options)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    for model in config.model_config.model_config_list.config:
        click.echo(f"model {model.name}: {model.base_path}", err=True)
    try:
        code = EmbeddedServer(options, config).run()
    except ServingError as error:
        raise click.ClickException(f"{error.code.name}: {error.message}") from None
    except OSError as error:  # a port in use
        raise click.ClickException(str(error)) from None
    _exit_after_drain(code)


def _exit_after_drain(code: int) -> NoReturn:
    """Leave as soon as the server has drained: flush the logs and stdio, then ``os._exit``.

    A normal exit runs the interpreter's teardown: full garbage collections over TensorFlow's millions of
    Python objects, then its C++ destructors, 1.7-4 s after "stopped" on this machine (more under load), while
    nothing after the drain needs it. Production servers leave the same way for the same reason.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing left to flush
            pass
    os._exit(code)


if __name__ == "__main__":
    serve()
