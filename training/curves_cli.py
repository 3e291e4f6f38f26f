"""``detserve curves``: the training-curves PNG of a model directory, without training or TensorFlow."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from .curves import CURVES_FILENAME, HISTORY_FILENAME, plot_training_curves


@click.command("curves")
@click.option("--model-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help=f"Training directory with {HISTORY_FILENAME} (`detserve train` writes it).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help=f"PNG to write. Default: <model-dir>/{CURVES_FILENAME}.")
def curves(model_dir: Path, out: Path | None) -> None:
    """Loss (total and components), learning-rate and validation-mAP curves of a training run as one PNG."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            path = plot_training_curves(model_dir / HISTORY_FILENAME, out or model_dir / CURVES_FILENAME)
        except (FileNotFoundError, ValueError) as error:
            raise click.ClickException(str(error)) from error
        finally:
            for warning in caught:  # one line each, "<file>:<line>: skipped: ..."
                click.echo(f"warning: {warning.message}", err=True)
    click.echo(f"wrote {path}")
