"""``--pretrained``: a TF2 Detection Zoo model, by name or local path, as a verified detection checkpoint.

A name is downloaded once into the cache (``$DETSERVE_CACHE/zoo``, default ``~/.cache/detserve/zoo``), its
sha256 checked, and extracted with tarfile's ``data`` filter (no absolute paths, ``..`` or links out of the
directory). The depth multiplier and input size come from the model itself: its ``pipeline.config``, cross-checked
against the checkpoint's variable shapes, so that nobody has to know that the zoo model's alpha is 1.0.

No sha256 of the zoo tarballs is published (none found in the zoo's pages or elsewhere), so ``ZOO_SHA256`` is
empty: the first download's hash is recorded beside the cached tarball and every later use is checked against
it (trust on first use), unless ``--pretrained-sha256`` pins it.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .initialisation import WeightsHashError, file_sha256, parse_sha256

ZOO_BASE_URL = "http://download.tensorflow.org/models/object_detection/tf2/20200711/"
ZOO_URL_ENV = "DETSERVE_ZOO_URL"  # another download base (a mirror, or the tests' local server)
CACHE_ENV = "DETSERVE_CACHE"

# The zoo models this kit's model builder builds (the template's feature extractor, ssd_mobilenet_v2_fpn_keras).
ZOO_MODELS = ("ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8", "ssd_mobilenet_v2_fpnlite_640x640_coco17_tpu-8")
# Other zoo SSDs, refused by name with the reason rather than after a download.
OTHER_ZOO_SSDS = {
    "ssd_mobilenet_v2_320x320_coco17_tpu-8": "SSD MobileNetV2 without FPN (feature extractor ssd_mobilenet_v2_keras)",
    "ssd_mobilenet_v1_fpn_640x640_coco17_tpu-8": "MobileNetV1 FPN",
    "ssd_resnet50_v1_fpn_640x640_coco17_tpu-8": "ResNet50 FPN",
    "ssd_resnet50_v1_fpn_1024x1024_coco17_tpu-8": "ResNet50 FPN",
    "ssd_resnet101_v1_fpn_640x640_coco17_tpu-8": "ResNet101 FPN",
    "ssd_resnet101_v1_fpn_1024x1024_coco17_tpu-8": "ResNet101 FPN",
    "ssd_resnet152_v1_fpn_640x640_coco17_tpu-8": "ResNet152 FPN",
    "ssd_resnet152_v1_fpn_1024x1024_coco17_tpu-8": "ResNet152 FPN",
}
# sha256 of the released tarballs: none published (see the module docstring); add them here when known.
ZOO_SHA256: dict[str, str] = {}

FEATURE_EXTRACTOR = "ssd_mobilenet_v2_fpn_keras"
# TFOD2's MobileNetV2 scales its last 1x1 conv (Conv_1) by alpha: 1280 * alpha output channels.
CONV_1_FILTERS = 1280
_BACKBONE_VARIABLE = re.compile(
    r"model/_feature_extractor/classification_backbone/layer_with_weights-(\d+)/kernel/\.ATTRIBUTES/VARIABLE_VALUE"
)

Echo = Callable[[str], None]


class ZooError(ValueError):
    """A zoo model that cannot be used: unknown name, unsafe archive, another architecture, or a width mismatch."""


@dataclass
class ZooCheckpoint:
    """An extracted zoo model and what training from it needs."""

    name: str
    directory: Path
    checkpoint_prefix: str
    depth_multiplier: float
    image_size: int
    sha256: str | None  # of the tarball (None: a directory given as it is)


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "detserve") / "zoo"


def resolve_pretrained(spec: str, sha256: str | None = None, depth_multiplier: float | None = None,
                       cache: Path | None = None, base_url: str | None = None, echo: Echo | None = None) -> ZooCheckpoint:
    """A zoo name, a local zoo tarball or an extracted zoo directory -> its checkpoint, width and input size.

    ``depth_multiplier`` is an explicitly requested width: a different one in the model is an error naming both.
    """
    echo = echo or (lambda message: None)
    cache = Path(cache) if cache else cache_dir()
    expected = parse_sha256(sha256, "--pretrained-sha256") if sha256 else None
    path = Path(spec).expanduser()
    if path.is_dir():
        if expected:
            raise ZooError(f"--pretrained-sha256 checks a tarball, but {path} is a directory")
        directory, digest = path, None
    elif path.is_file() or spec.endswith((".tar.gz", ".tgz", ".tar")):
        if not path.is_file():
            raise FileNotFoundError(f"zoo tarball {path} not found")
        digest = file_sha256(path)
        if expected and digest != expected:
            raise WeightsHashError(f"zoo tarball {path}: sha256 {digest}, expected {expected}; not used")
        directory = _extract(path, cache / f"{_stem(path)}-{digest[:12]}")
    else:
        tarball, digest = _download(_known_name(spec), cache, expected, base_url, echo)
        directory = _extract(tarball, cache / f"{spec}-{digest[:12]}")
    model = _read_model(_model_directory(directory), digest)
    if depth_multiplier is not None and abs(depth_multiplier - model.depth_multiplier) > 1e-6:
        raise ZooError(
            f"--depth-multiplier {depth_multiplier} does not match the pretrained model {model.name}, whose "
            f"depth_multiplier is {model.depth_multiplier}: drop --depth-multiplier (it is taken from the model) "
            f"or give {model.depth_multiplier}"
        )
    return model


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _known_name(name: str) -> str:
    if name in ZOO_MODELS:
        return name
    if name in OTHER_ZOO_SSDS:
        raise ZooError(
            f"--pretrained {name} is a {OTHER_ZOO_SSDS[name]} model; this kit builds SSD MobileNetV2 FPN-Lite only: "
            f"use one of {', '.join(ZOO_MODELS)}"
        )
    raise ZooError(
        f"--pretrained {name!r} is neither a file or directory nor a known zoo model; known: {', '.join(ZOO_MODELS)}"
    )


def _download(name: str, cache: Path, expected: str | None, base_url: str | None, echo: Echo) -> tuple[Path, str]:
    """The cached ``<name>.tar.gz``, downloaded first if missing; checked against the pinned, the published or
    the recorded sha256. Returns the tarball and its sha256."""
    tarball = cache / f"{name}.tar.gz"
    recorded_file = tarball.with_name(tarball.name + ".sha256")
    recorded = recorded_file.read_text().split()[0] if recorded_file.is_file() else None
    expected = expected or ZOO_SHA256.get(name) or recorded
    if tarball.is_file():
        digest = file_sha256(tarball)
        if expected and digest != expected:
            raise WeightsHashError(
                f"cached zoo tarball {tarball}: sha256 {digest}, expected {expected}; not used (delete it to download again)"
            )
        echo(f"using cached {tarball}")
    else:
        digest = _fetch(tarball, expected, base_url, echo)
    if recorded != digest:  # first use, or a pin that replaced the record
        recorded_file.write_text(f"{digest}  {tarball.name}\n")
        if not expected:
            echo(f"no published sha256 for {name}: recorded {digest} in {recorded_file}; later runs are checked "
                 "against it")
    return tarball, digest


def _fetch(tarball: Path, expected: str | None, base_url: str | None, echo: Echo) -> str:
    """Download the zoo's file of ``tarball``'s name into it, kept only when complete and (given ``expected``)
    verified. Returns its sha256."""
    cache = tarball.parent
    url = (base_url or os.environ.get(ZOO_URL_ENV) or ZOO_BASE_URL).rstrip("/") + f"/{tarball.name}"
    cache.mkdir(parents=True, exist_ok=True)
    echo(f"downloading {url} to {cache}")
    # Into a temporary file beside the tarball, renamed only once complete and verified: no half file is ever cached.
    handle, partial = tempfile.mkstemp(dir=cache, prefix=f".{tarball.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        digest = file_sha256(partial)
        if expected and digest != expected:
            raise WeightsHashError(f"downloaded {url}: sha256 {digest}, expected {expected}; not kept")
        os.replace(partial, tarball)
    except OSError as error:
        raise FileNotFoundError(
            f"could not download {url} ({error}); without network access pass a local zoo tarball or directory "
            "to --pretrained"
        ) from error
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return digest


def _extract(tarball: Path, target: Path) -> Path:
    """Extract once into ``target`` (reused when present), through a temporary directory renamed when complete."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".extracting"))
    try:
        with tarfile.open(tarball) as archive:
            # The 'data' filter would only strip a leading '/': a zoo tarball never has one, so refuse it.
            absolute = [member.name for member in archive.getmembers() if member.name.startswith(("/", "\\"))]
            if absolute:
                raise tarfile.FilterError(f"absolute path {absolute[0]!r}")
            # The 'data' filter refuses '..', links leaving the directory and device files.
            archive.extractall(staging, filter="data")
        os.replace(staging, target)
    except tarfile.FilterError as error:
        raise ZooError(f"zoo tarball {tarball} is unsafe, not extracted: {error}") from error
    except tarfile.TarError as error:
        raise ZooError(f"zoo tarball {tarball} cannot be read: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _model_directory(directory: Path) -> Path:
    """The zoo layout: ``<name>/pipeline.config`` and ``<name>/checkpoint/ckpt-0.*``, at the top or one level down."""
    candidates = [directory] + sorted(p for p in directory.iterdir() if p.is_dir())
    for candidate in candidates:
        if (candidate / "pipeline.config").is_file() and (candidate / "checkpoint").is_dir():
            return candidate
    raise ZooError(f"{directory} is not a zoo model: no <name>/pipeline.config with a <name>/checkpoint/ directory")


def _read_model(directory: Path, digest: str | None) -> ZooCheckpoint:
    from google.protobuf import text_format

    from .initialisation import detection_checkpoint
    from .pipeline_config import load_pipeline_config

    config_path = directory / "pipeline.config"
    try:
        config = load_pipeline_config(config_path)
    except text_format.ParseError as error:
        raise ZooError(f"cannot parse {config_path}: {error}") from error
    ssd = config.model.ssd
    if config.model.WhichOneof("model") != "ssd" or ssd.feature_extractor.type != FEATURE_EXTRACTOR:
        kind = ssd.feature_extractor.type or config.model.WhichOneof("model")
        raise ZooError(f"{config_path}: feature extractor {kind!r}; this kit builds {FEATURE_EXTRACTOR} (SSD MobileNetV2 FPN-Lite) only")
    resizer = ssd.image_resizer.fixed_shape_resizer
    if resizer.height != resizer.width:
        raise ZooError(f"{config_path}: input {resizer.width}x{resizer.height}; this kit trains square inputs only")
    prefix = detection_checkpoint(str(directory))
    depth_multiplier = round(ssd.feature_extractor.depth_multiplier, 6)
    in_checkpoint = checkpoint_depth_multiplier(prefix)
    if abs(in_checkpoint - depth_multiplier) > 1e-3:
        raise ZooError(
            f"{config_path} says depth_multiplier {depth_multiplier}, but the checkpoint {prefix} holds a backbone of "
            f"alpha {in_checkpoint}: the tarball's config and checkpoint do not belong together"
        )
    return ZooCheckpoint(name=directory.name, directory=directory, checkpoint_prefix=prefix,
                         depth_multiplier=depth_multiplier, image_size=resizer.height, sha256=digest)


def checkpoint_depth_multiplier(prefix: str) -> float:
    """MobileNetV2's alpha read from a TFOD2 SSD checkpoint's shapes: the last backbone conv (Conv_1) has
    ``1280 * alpha`` output channels."""
    import tensorflow as tf

    kernels = []
    for name, shape in tf.train.list_variables(prefix):
        match = _BACKBONE_VARIABLE.fullmatch(name)
        if match:
            kernels.append((int(match[1]), shape))
    if not kernels:
        raise ZooError(f"{prefix} is not a TFOD2 SSD MobileNetV2 checkpoint: no model/_feature_extractor/classification_backbone kernels")
    return round(max(kernels)[1][-1] / CONV_1_FILTERS, 3)
