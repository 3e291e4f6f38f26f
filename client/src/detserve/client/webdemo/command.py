"""``detserve demo``: the web demo against a served model (needs ``pip install 'detserve-client[demo]'``)."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli import _detector, server_options
from ..sources import IMAGE_EXTENSIONS
from .logic import DETECT_THRESHOLD


def example_images(paths: tuple[str, ...]) -> list[Path]:
    """Files as given, and the images directly inside each directory (sorted by name)."""
    found: list[Path] = []
    for value in paths:
        path = Path(value)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not images:
                raise click.BadParameter(f"{path}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this directory",
                                         param_hint="--examples")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise click.BadParameter(f"{path}: no such file or directory", param_hint="--examples")
    return found


@click.command()
@server_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve the page on.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="Port of the page.")
@click.option("--examples", multiple=True, metavar="DIR|FILE",
              help="Example images to click (files, or directories of images). Repeatable.")
@click.option("--score-threshold", type=click.FloatRange(DETECT_THRESHOLD, 1), default=0.5, show_default=True,
              help="The slider's starting value.")
def demo(server, model, model_version, version_label, timeout, ca_cert, server_name, headers, host, port, examples,
         score_threshold):
    """A web page to try a served detector: upload an image, see its boxes, move the score threshold."""
    from .app import build_app, launch, require_gradio

    try:
        require_gradio()
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    images = example_images(examples)
    detector = _detector(server, model, model_version, version_label, timeout, ca_cert, server_name, headers)
    with detector:
        click.echo(f"detserve demo: model {model!r} at {detector.server}; page on http://{host}:{port}/")
        launch(build_app(detector, images, score_threshold, model=model), host, port)
