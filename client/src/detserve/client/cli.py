"""The `detserve` command.

The client distribution owns the command so that `detserve detect` works with only detserve-client
installed. Other distributions (the full detserve kit) add subcommands through the
``detserve.commands`` entry-point group.

Built in here (client only, no TensorFlow): ``detect``, ``status``, ``metadata``.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click

from .retry import DEFAULT_TIMEOUT


class PluginGroup(click.Group):
    """A click group that also lists subcommands registered by installed distributions."""

    def _plugins(self) -> dict:
        return {ep.name: ep for ep in entry_points(group="detserve.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        plugin = self._plugins().get(name)
        return plugin.load() if plugin is not None else None


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """detserve: train, export, serve and call object detectors on TensorFlow Serving."""


# ------------------------------------------------------------------------------------------------------------
# Client commands. Exit codes: 0 success, 2 usage, 3 model/version/signature not found, 4 invalid input,
# 5 server unavailable, 6 deadline exceeded, 1 any other failure. Errors are one line on stderr.

EXIT_CODES = {"ModelNotFound": 3, "InvalidInput": 4, "ServerUnavailable": 5, "DeadlineExceeded": 6}


class ClientFailure(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(" ".join(message.split()))  # one line
        self.exit_code = exit_code


def _fail(error: Exception) -> ClientFailure:
    from .errors import DetserveClientError

    if isinstance(error, DetserveClientError):
        return ClientFailure(f"{type(error).__name__}: {error}", EXIT_CODES.get(type(error).__name__, 1))
    return ClientFailure(str(error) or type(error).__name__)


def _parse_headers(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for value in values:
        key, sep, item = value.partition(":")
        if not sep or not key.strip():
            raise click.BadParameter(f"{value!r}: expected NAME:VALUE", param_hint="--header")
        headers[key.strip()] = item.strip()
    return headers


def server_options(function):
    """--server, --model, --version/--label, TLS, headers and timeout: shared by the client commands."""
    options = [
        click.option("--server", "-s", default="grpc://localhost:8500", show_default=True, envvar="DETSERVE_SERVER",
                     help="grpc://host:port, grpcs://host:port (TLS), http://host:port or https://host:port."),
        click.option("--model", "-m", default="detector", show_default=True, envvar="DETSERVE_MODEL",
                     help="Served model name."),
        click.option("--version", "model_version", type=int, default=None, help="Model version (default: newest)."),
        click.option("--label", "version_label", default=None, help="Version label (e.g. stable, canary)."),
        click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True,
                     help="Deadline per call, retries included, seconds."),
        click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="PEM CA certificate for grpcs:// / https:// servers with a private CA."),
        click.option("--server-name", default=None, help="Name expected in the server's TLS certificate (gRPC)."),
        click.option("--header", "-H", "headers", multiple=True, metavar="NAME:VALUE",
                     help="Extra request header / gRPC metadata, e.g. 'authorization: Bearer TOKEN'. Repeatable."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _detector(server, model, model_version, version_label, timeout, ca_cert, server_name, headers, **extra):
    from .detector import Detector

    try:
        return Detector(server, model, model_version, version_label, timeout=timeout, ca_cert=ca_cert,
                        server_name=server_name, headers=_parse_headers(headers), **extra)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _output_name(image: str, used: set[str]) -> str:
    stem = Path(image).stem or "image"
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.png"
    used.add(name)
    return name


def _table(image: str, width: int, height: int, detections, annotated: str | None) -> str:
    lines = [f"{image} ({width}x{height}): {len(detections)} detection{'s' if len(detections) != 1 else ''}"
             + (f" -> {annotated}" if annotated else "")]
    if detections:
        lines.append(f"  {'label':<24} {'class':>5} {'score':>6} {'xmin':>8} {'ymin':>8} {'xmax':>8} {'ymax':>8}")
        for d in detections:
            lines.append(f"  {d.label[:24]:<24} {d.class_id:>5} {d.score:>6.3f} {d.box.xmin:>8.1f} {d.box.ymin:>8.1f} "
                         f"{d.box.xmax:>8.1f} {d.box.ymax:>8.1f}")
    return "\n".join(lines)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@server_options
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Drop detections scoring below this.")
@click.option("--max-detections", type=click.IntRange(min=1), default=None, help="At most this many per image.")
@click.option("--encoding", type=click.Choice(["auto", "raw", "jpeg", "png"]), default="auto", show_default=True,
              help="auto: raw uint8 over gRPC, JPEG over REST.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write <DIR>/<image>.png with the labelled boxes drawn.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per request.")
def detect(images, server, model, model_version, version_label, timeout, ca_cert, server_name, headers,
           score_threshold, max_detections, encoding, out_dir, as_json, batch_size):
    """Detect objects in IMAGE... with a served model; print a table or JSON, optionally write annotated PNGs."""
    from .images import load_image

    detector = _detector(server, model, model_version, version_label, timeout, ca_cert, server_name, headers,
                         encoding=encoding, max_batch_size=batch_size)
    records = []
    used: set[str] = set()
    out = Path(out_dir) if out_dir else None
    try:
        with detector:
            for start in range(0, len(images), batch_size):
                batch = list(images[start:start + batch_size])
                loaded = [load_image(path) for path in batch]
                results = detector.detect_batch(loaded, score_threshold=score_threshold,
                                                max_detections=max_detections)
                for path, image, detections in zip(batch, loaded, results, strict=True):
                    annotated = None
                    if out is not None:
                        from PIL import Image

                        from .draw import annotate

                        out.mkdir(parents=True, exist_ok=True)
                        annotated = str(out / _output_name(path, used))
                        annotate(Image.fromarray(image.pixels), detections).save(annotated)
                    records.append((path, image, detections, annotated))
                    if not as_json:
                        click.echo(_table(path, image.width, image.height, detections, annotated))
    except Exception as error:  # noqa: BLE001 - every failure becomes one line and an exit code
        raise _fail(error) from None
    if as_json:
        click.echo(json.dumps([{"image": path, "width": image.width, "height": image.height,
                                "detections": [d.to_dict() for d in detections], "annotated": annotated}
                               for path, image, detections, annotated in records], indent=2))


@main.command()
@server_options
@click.option("--wait", type=float, default=None, metavar="SECONDS",
              help="Wait up to SECONDS for the model to become AVAILABLE.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(server, model, model_version, version_label, timeout, ca_cert, server_name, headers, wait, as_json):
    """The state of each version of a served model (exit 0 only if a version is AVAILABLE)."""
    detector = _detector(server, model, model_version, version_label, timeout, ca_cert, server_name, headers)
    try:
        with detector:
            result = detector.wait_until_ready(wait) if wait is not None else detector.status()
    except Exception as error:  # noqa: BLE001
        raise _fail(error) from None
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"model {model!r} at {detector.server}")
        for v in result.versions:
            problem = f" ({v.error_code}: {v.error_message})" if v.error_code != "OK" or v.error_message else ""
            click.echo(f"  version {v.version}: {v.state}{problem}")
    if not result.is_available(model_version):
        raise ClientFailure(f"model {model!r}{f' version {model_version}' if model_version else ''} "
                            "has no AVAILABLE version", 1)


@main.command()
@server_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def metadata(server, model, model_version, version_label, timeout, ca_cert, server_name, headers, as_json):
    """A served model's signatures, input size and class names."""
    detector = _detector(server, model, model_version, version_label, timeout, ca_cert, server_name, headers)
    try:
        with detector:
            meta = detector.metadata(class_names=True)
    except Exception as error:  # noqa: BLE001
        raise _fail(error) from None
    if as_json:
        click.echo(json.dumps(meta.to_dict(), indent=2))
        return
    size = f"{meta.input_size[1]}x{meta.input_size[0]}" if meta.input_size else "unknown"
    click.echo(f"model {meta.model!r} version {meta.version} at {detector.server}")
    click.echo(f"  input size (WxH): {size}")
    if meta.class_names:
        click.echo("  classes: " + ", ".join(f"{i}={n}" for i, n in sorted(meta.class_names.items())))
    for name, signature in sorted(meta.signatures.items()):
        click.echo(f"  signature {name!r} ({signature.method_name})")
        for kind, specs in (("in ", signature.inputs), ("out", signature.outputs)):
            for key, spec in sorted(specs.items()):
                shape = "?" if spec.shape is None else "[" + ", ".join("-1" if d is None else str(d)
                                                                       for d in spec.shape) + "]"
                click.echo(f"    {kind} {key}: {spec.dtype} {shape}")


if __name__ == "__main__":
    sys.exit(main())
