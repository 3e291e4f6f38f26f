"""The `detserve` command.

The client distribution owns the command so that `detserve detect` works with only detserve-client
installed. Other distributions (the full detserve kit) add subcommands through the
``detserve.commands`` entry-point group.

Built in here (client only, no TensorFlow): ``detect``, ``status``, ``metadata``.
"""

from __future__ import annotations

import itertools
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
# 5 server unavailable, 6 deadline exceeded, 130 interrupted (Ctrl-C), 1 any other failure. Errors are one
# line on stderr. `detect` skips bad inputs by name: 0 if any input went through, 4 if none; with --strict
# the first bad input fails the run with 4.

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


def _output_name(stem: str, used: set[str], suffix: str = ".png") -> str:
    """``<stem><suffix>``, or ``<stem>-2<suffix>``, ... if an earlier input of this run took the name."""
    stem = stem or "image"
    name, n = f"{stem}{suffix}", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}{suffix}"
    used.add(name)
    return name


class _Inputs:
    """Bad inputs: reported on stderr by name and skipped, or (``--strict``) the run fails with exit 4."""

    def __init__(self, strict: bool, say):
        self.strict, self.say = strict, say
        self.skipped: list[str] = []
        self.done = 0

    def bad(self, name: str, error: Exception) -> None:
        from .errors import InvalidInput

        message = " ".join(str(error.message if isinstance(error, InvalidInput) else error).split())
        if self.strict:
            raise ClientFailure(f"InvalidInput: {message} (--strict)", 4)
        if name not in message:
            message = f"{name}: {message}"
        self.skipped.append(message)
        self.say(f"skipped: {message}")


def _items(sources, inputs: _Inputs, counter: itertools.count, **read_args):
    """Every image and frame of ``sources`` in order, each with its 1-based index; bad sources skipped."""
    from dataclasses import replace

    from .errors import InvalidInput
    from .sources import read
    from .video import VideoUnavailable

    for position, source in enumerate(sources):
        try:
            for item in read(source, **read_args):
                yield next(counter), replace(item, position=position)
        except (InvalidInput, VideoUnavailable) as error:  # no OpenCV: skip the videos, not the whole run
            next(counter)  # a skipped image keeps its index: ids stay the input order
            inputs.bad(source.name, error)


def _detect_batch(detector, batch, inputs: _Inputs, **options):
    """Detections for each (index, item) of ``batch``; if the server rejects the batch, image by image, so one
    bad image (e.g. a truncated JPEG whose header reads) is skipped by name and the others still go through."""
    from .errors import InvalidInput

    try:
        return list(zip(batch, detector.detect_batch([item.image for _, item in batch], **options), strict=True))
    except InvalidInput as error:
        if len(batch) == 1:
            inputs.bad(batch[0][1].image.source, error)
            return []
    results = []
    for entry in batch:
        results.extend(_detect_batch(detector, [entry], inputs, **options))
    return results


def _expected_count(sources, max_frames: int | None, vid_stride: int) -> int | None:
    """Images + frames the run will read (for the progress bar's total), None if a source cannot say."""
    from .errors import InvalidInput
    from .sources import open_video
    from .video import VideoUnavailable

    total = 0
    for source in sources:
        if not source.is_stream:
            total += 1
            continue
        if source.kind == "camera" or "://" in source.target:  # opening a device or stream twice is slow
            if max_frames is None:
                return None
            total += max_frames
            continue
        try:
            reader = open_video(source, max_frames=max_frames, vid_stride=vid_stride)
        except (InvalidInput, VideoUnavailable):
            continue  # reported when it is read
        count = reader.expected_frames
        reader.close()
        if count is None:
            return None
        total += count
    return total


@main.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCES...")
@server_options
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Drop detections scoring below this.")
@click.option("--max-detections", type=click.IntRange(min=1), default=None, help="At most this many per image.")
@click.option("--encoding", type=click.Choice(["auto", "raw", "jpeg", "png"]), default="auto", show_default=True,
              help="auto: raw uint8 over gRPC, JPEG over REST.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write <DIR>/<image>.png (images) and <DIR>/<video>.mp4 (videos, cameras) with the boxes drawn.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "jsonl", "csv", "coco"]), default=None,
              help="Output on stdout (default table): json = one list at the end, jsonl = one object per "
                   "image/frame, csv = one row per detection, coco = COCO results JSON.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--coco-gt", type=click.Path(exists=True, dir_okay=False), default=None,
              help="COCO ground truth: --format coco uses the id of the image whose file_name matches.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per request.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="At most this many frames per video or camera.")
@click.option("--vid-stride", type=click.IntRange(min=1), default=1, show_default=True,
              help="Detect on every K-th frame of videos and cameras.")
@click.option("--strict", is_flag=True, help="Fail (exit 4) on the first bad input instead of skipping it.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def detect(sources, server, model, model_version, version_label, timeout, ca_cert, server_name, headers,
           score_threshold, max_detections, encoding, out_dir, fmt, as_json, coco_gt, batch_size, max_frames,
           vid_stride, strict, quiet):
    """Detect objects in SOURCES with a served model.

    SOURCES: image files, folders (recursive), globs ('photos/**/*.jpg', quoted), - (one image on stdin),
    http(s) URLs, video files (.mp4 .avi .mov .mkv .webm ...), rtsp:// streams, or a camera index (0).
    Bad inputs are reported on stderr and skipped (exit 0 if any input went through, 4 if none); --strict
    fails on the first (exit 4). Ctrl-C stops a run and keeps what was detected (exit 130). Annotated
    images/videos go to --out.
    """
    import numpy as np
    from tqdm import tqdm

    from .errors import InvalidInput
    from .results import Record, make_writer
    from .sources import resolve
    from .video import VideoSink, VideoUnavailable

    if as_json and fmt not in (None, "json"):
        raise click.BadParameter(f"--json is --format json; it conflicts with --format {fmt}", param_hint="--json")
    fmt = "json" if as_json else fmt or "table"
    if coco_gt and fmt != "coco":
        raise click.BadParameter("only used with --format coco", param_hint="--coco-gt")
    bar = None

    def say(text: str) -> None:  # stderr, around the progress bar
        tqdm.write(text, file=sys.stderr) if bar is not None else click.echo(text, err=True)

    def echo(text: str) -> None:  # stdout, around the progress bar
        tqdm.write(text, file=sys.stdout) if bar is not None else click.echo(text)

    inputs = _Inputs(strict, say)
    resolved, collections = [], False
    for argument in sources:
        try:
            found = resolve(argument)
            resolved.extend(found)
            collections = collections or len(found) != 1 or found[0].target != argument  # a folder or a glob
        except InvalidInput as error:
            inputs.bad(argument, error)
    try:
        writer = make_writer(fmt, echo, coco_gt=coco_gt)
    except InvalidInput as error:
        raise _fail(error) from None
    detector = _detector(server, model, model_version, version_label, timeout, ca_cert, server_name, headers,
                         encoding=encoding, max_batch_size=batch_size)
    out = Path(out_dir) if out_dir else None
    used: set[str] = set()
    videos: dict = {}  # the source's position in the run -> VideoSink of its annotated frames
    streams = any(source.is_stream for source in resolved)
    # A progress bar for folders, globs, videos and cameras; not for images named one by one.
    show_bar = not quiet and (streams or (collections and len(resolved) > 1))
    interrupted = False
    try:
        total = _expected_count(resolved, max_frames, vid_stride) if show_bar and streams else len(resolved)
        bar = tqdm(total=total, unit="frame" if streams else "img", file=sys.stderr, dynamic_ncols=True,
                   disable=not show_bar, leave=False)
        if bar.disable:
            bar = None
        items = _items(resolved, inputs, itertools.count(1), stdin=click.get_binary_stream("stdin"),
                       timeout=timeout, max_frames=max_frames, vid_stride=vid_stride)
        with detector:
            while batch := list(itertools.islice(items, batch_size)):
                for (index, item), detections in _detect_batch(detector, batch, inputs,
                                                                score_threshold=score_threshold,
                                                                max_detections=max_detections):
                    annotated = None
                    if out is not None:
                        from .draw import annotate

                        try:  # pixels decode lazily: an image the server read may still fail in Pillow
                            drawn = annotate(item.image.pixels, detections)
                        except InvalidInput as error:
                            inputs.bad(item.image.source, error)
                            continue
                        if item.source.is_stream:
                            for done in [p for p in videos if p != item.position]:  # sources come one by one
                                videos.pop(done).close()
                            if item.position not in videos:
                                videos[item.position] = VideoSink(
                                    out / _output_name(item.source.stem, used, ".mp4"), item.fps or 25.0)
                            sink = videos[item.position]
                            sink.write(np.asarray(drawn))
                            annotated = str(sink.path)
                        else:
                            out.mkdir(parents=True, exist_ok=True)
                            annotated = str(out / _output_name(item.source.stem, used))
                            drawn.save(annotated, compress_level=1)  # level 6: 67 vs 23 ms per 640x360 photo
                    record = Record(item.source.name, index,
                                    item.image.width, item.image.height, detections, item.frame, item.timestamp,
                                    annotated)
                    try:
                        writer.write(record)
                    except InvalidInput as error:  # e.g. no such file_name in --coco-gt
                        inputs.bad(record.source, error)
                        continue
                    inputs.done += 1
                if bar is not None:
                    bar.update(len(batch))
    except KeyboardInterrupt:  # a camera runs until Ctrl-C: keep what was detected
        interrupted = True
    except ClientFailure:
        raise
    except VideoUnavailable as error:
        raise ClientFailure(str(error), 1) from None
    except Exception as error:  # noqa: BLE001 - every failure becomes one line and an exit code
        raise _fail(error) from None
    finally:
        for sink in videos.values():
            sink.close()
        if bar is not None:
            bar.close()
            bar = None
    writer.close()
    if inputs.skipped:
        say(f"{len(inputs.skipped)} input{'s' if len(inputs.skipped) != 1 else ''} skipped, {inputs.done} done")
    if interrupted:
        raise ClientFailure("interrupted", 130)
    if not inputs.done and inputs.skipped:
        raise ClientFailure(f"InvalidInput: {inputs.skipped[0]}", 4)
    if not inputs.done and not resolved:
        raise ClientFailure("InvalidInput: no images or videos in " + ", ".join(sources), 4)


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
