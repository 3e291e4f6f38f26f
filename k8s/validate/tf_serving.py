"""A TF Serving container: its flags, ports, config files, models, probes and termination.

The server parses its configs only at start-up and ignores what it does not know, so these checks catch what would
otherwise surface as a crash-looping or silently misconfigured Pod.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

# The TF Serving config protos are shared with the exporter and the embedded server.
from detserve.serving import tfs_config
from detserve.serving.health import TF_SERVING_SERVICES

from .hardware import check_hardware
from .images import image_tag
from .objects import (
    container_port_numbers,
    cpu_cores,
    describe,
    describe_container,
    expand,
    mounted_configmap_file,
    resolve_env,
    resolve_port,
)

GRPC_PORT_NAME, REST_PORT_NAME = "grpc", "http"
METADATA_PATH = re.compile(
    r"^/v1/models/(?P<model>[^/]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/]+))?/metadata$"
)

# Flags of tensorflow_model_server 2.21 (tensorflow_serving/model_servers/main.cc). The server only prints its usage
# on an unknown flag and starts anyway, so a misspelt flag would be ignored silently: catch it here.
KNOWN_TFS_FLAGS = frozenset(
    """
    port grpc_socket_path rest_api_port rest_api_num_threads rest_api_timeout_in_ms rest_api_enable_cors_support
    enable_batching allow_version_labels_for_unavailable_models batching_parameters_file
    enable_per_model_batching_parameters model_config_file model_config_file_poll_wait_seconds model_name
    model_base_path num_load_threads num_unload_threads max_num_load_retries load_retry_interval_micros
    file_system_poll_wait_seconds flush_filesystem_caches tensorflow_session_parallelism
    tensorflow_session_config_file tensorflow_intra_op_parallelism tensorflow_inter_op_parallelism
    use_alts_credentials ssl_config_file platform_config_file per_process_gpu_memory_fraction saved_model_tags
    grpc_channel_arguments grpc_max_threads enable_model_warmup num_request_iterations_for_warmup version
    monitoring_config_file remove_unused_fields_from_bundle_metagraph prefer_tflite_model num_tflite_pools
    num_tflite_interpreters_per_pool enable_signature_method_name_check xla_cpu_compilation_enabled enable_profiler
    thread_pool_factory_config_file enable_grpc_healthcheck_service
    """.split()
)
REQUIRED_TFS_FLAGS = (
    "port",
    "rest_api_port",
    "model_config_file",
    "model_config_file_poll_wait_seconds",
    "file_system_poll_wait_seconds",
    "enable_batching",
    "batching_parameters_file",
    "monitoring_config_file",
    "rest_api_timeout_in_ms",
    "enable_model_warmup",
)
# The config-file flags and the proto each file must parse as.
CONFIG_FLAGS = (
    ("model_config_file", tfs_config.ModelServerConfig),
    ("batching_parameters_file", tfs_config.BatchingParameters),
    ("monitoring_config_file", tfs_config.MonitoringConfig),
)


def truthy(value: str | None) -> bool:
    return str(value).lower() in {"true", "1", "yes"}


def tfs_flags(container: dict, env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """TF Serving flags of a container (command + args, $(VAR) expanded); the last occurrence of a flag wins."""
    flags: dict[str, str] = {}
    problems: list[str] = []
    for arg in (container.get("command") or [])[1:] + (container.get("args") or []):
        value, missing = expand(str(arg), env)
        problems += [
            f"argument {arg!r} refers to $({name}), which is not in the container's env" for name in missing
        ]
        if not value.startswith("--"):
            problems.append(f"argument {arg!r} is not a --flag")
            continue
        name, eq, flag_value = value[2:].partition("=")
        flags[name] = flag_value if eq else "true"
    return flags, problems


def check_tf_serving(
    obj: dict, pod_spec: dict, container: dict, objects: list[dict], hardware: str | None
) -> Iterator[str]:
    where = describe_container(obj, container)
    flags, problems = tfs_flags(container, resolve_env(container, objects))
    problems += _server_problems(flags, pod_spec, container, objects, hardware)
    yield from (f"{where}: {p}" for p in problems)
    yield from _check_termination(obj, pod_spec, container, flags)
    yield from check_hardware(obj, pod_spec, container, hardware, flags)


def _server_problems(
    flags: dict[str, str], pod_spec: dict, container: dict, objects: list[dict], hardware: str | None
) -> Iterator[str]:
    """Flags, ports, config files, models and probes of the server (messages without the container's name)."""
    yield from _flag_problems(flags)

    # Ports: named grpc/http, equal to the flags.
    ports = container_port_numbers(container)
    for port_name, flag in ((GRPC_PORT_NAME, "port"), (REST_PORT_NAME, "rest_api_port")):
        if port_name not in ports:
            yield f"no containerPort named {port_name!r}"
        elif flag in flags and str(ports[port_name]) != flags[flag]:
            yield f"containerPort {port_name}={ports[port_name]} but --{flag}={flags[flag]}"

    # Config files: in the mounted ConfigMap, and valid protos.
    parsed = {}
    for flag, message_type in CONFIG_FLAGS:
        path = flags.get(flag)
        if not path:
            continue
        text, reason = mounted_configmap_file(path, pod_spec, container, objects)
        if text is None:
            yield f"--{flag}: {reason}"
            continue
        try:
            parsed[flag] = tfs_config.parse_text(text, message_type, path)
        except Exception as exc:  # text_format.ParseError
            yield f"--{flag}: {exc}"
    if "batching_parameters_file" in parsed:
        yield from _batching_problems(parsed["batching_parameters_file"], flags, container, hardware)
    if "monitoring_config_file" in parsed and not parsed["monitoring_config_file"].prometheus_config.enable:
        yield f"Prometheus metrics are not enabled in {flags['monitoring_config_file']}"
    models = []
    if "model_config_file" in parsed:
        models = list(tfs_config.model_configs(parsed["model_config_file"]))
        yield from _model_problems(models, flags, container)
    yield from _probe_problems(container, ports.get(REST_PORT_NAME), models)
    yield from _liveness_problems(container, flags)


def _flag_problems(flags: dict[str, str]) -> Iterator[str]:
    for name in sorted(set(flags) - KNOWN_TFS_FLAGS):
        yield f"--{name} is not a tensorflow_model_server flag (the server would ignore it)"
    for name in REQUIRED_TFS_FLAGS:
        if name not in flags:
            yield f"--{name} is not set"
    for name in ("enable_batching", "enable_model_warmup"):
        if name in flags and not truthy(flags[name]):
            yield f"--{name}={flags[name]} (must be true)"


def _batching_problems(params, flags: dict[str, str], container: dict, hardware: str | None) -> Iterator[str]:
    """The batching rules, and batch threads that fit the container's CPU limit."""
    path = flags["batching_parameters_file"]
    yield from tfs_config.check_batching(params, path)
    cores = cpu_cores(((container.get("resources") or {}).get("limits") or {}).get("cpu"))
    threads = params.num_batch_threads.value if params.HasField("num_batch_threads") else None
    if cores is None or threads is None:
        return
    on_gpu = hardware == "gpu" or (hardware is None and image_tag(container).endswith("-gpu"))
    if (not on_gpu and threads != math.ceil(cores)) or (on_gpu and threads > math.ceil(cores)):
        yield (
            f"num_batch_threads {threads} in {path} does not fit the container's CPU limit of {cores:g} "
            "(one batch thread per core on CPU, at most that on GPU)"
        )


def _model_problems(models: list, flags: dict[str, str], container: dict) -> Iterator[str]:
    """Each model on a mounted volume; version labels only on pinned versions, with the flag that allows them."""
    mounts = [m.get("mountPath", "").rstrip("/") for m in container.get("volumeMounts") or []]
    for model in models:
        if not any(model.base_path.startswith(m + "/") for m in mounts if m):
            yield f"model {model.name}: base_path {model.base_path} is on no mounted volume"
        if not model.version_labels:
            continue
        policy = model.model_version_policy.WhichOneof("policy_choice")
        if policy != "specific":
            yield (
                f"model {model.name} has version labels with a {policy or 'default (latest)'} "
                "version policy; the labelled versions can be unloaded under the labels (use `specific`)"
            )
        else:
            pinned = set(model.model_version_policy.specific.versions)
            for label, version in model.version_labels.items():
                if version not in pinned:
                    yield f"model {model.name}: label {label} -> {version}, a version not served"
        if not truthy(flags.get("allow_version_labels_for_unavailable_models")):
            yield (
                f"model {model.name} has version labels, but without "
                "--allow_version_labels_for_unavailable_models=true a starting server rejects them"
            )


def _probe_problems(container: dict, rest_port: int | None, models: list) -> Iterator[str]:
    """Startup and readiness on the REST metadata endpoint of a served model (or label)."""
    served = {model.name: dict(model.version_labels) for model in models}
    for probe_name in ("startupProbe", "readinessProbe"):
        probe = container.get(probe_name)
        if not probe:
            yield f"no {probe_name}"
            continue
        http = probe.get("httpGet")
        if not http:
            yield f"{probe_name} must be an httpGet on the model's REST metadata endpoint"
            continue
        number = resolve_port(http.get("port"), container)
        if number is None:
            yield f"{probe_name} port {http.get('port')!r} is not a port of the container"
        elif number != rest_port:
            yield (
                f"{probe_name} httpGet targets port {http.get('port')} ({number}); the REST API "
                f"(metadata endpoint) is port {REST_PORT_NAME} ({rest_port})"
            )
        match = METADATA_PATH.match(http.get("path", ""))
        if not match:
            yield (
                f"{probe_name} path {http.get('path')!r} is not /v1/models/<name>/metadata (the status "
                "endpoint answers 200 while a version is still loading)"
            )
        elif served and match["model"] not in served:
            yield f"{probe_name} checks model {match['model']!r}, not served here ({', '.join(served)})"
        elif match["label"] and match["label"] not in served.get(match["model"], {}):
            yield f"{probe_name} checks label {match['label']!r}, which the model config does not define"


def _liveness_problems(container: dict, flags: dict[str, str]) -> Iterator[str]:
    """Liveness on a port of the container; a gRPC probe needs the server's health service on its gRPC port."""
    liveness = container.get("livenessProbe")
    if not liveness:
        yield "no livenessProbe"
        return
    handler = liveness.get("tcpSocket") or liveness.get("httpGet") or liveness.get("grpc")
    if not handler:
        yield "livenessProbe has no tcpSocket/httpGet/grpc handler"
        return
    number = resolve_port(handler.get("port"), container)
    if number is None:
        yield f"livenessProbe port {handler.get('port')!r} is not a port of the container"
    if "grpc" not in liveness:
        return
    # Without the flag the server has no grpc.health.v1 service: every probe fails (UNIMPLEMENTED) and the kubelet
    # restarts a healthy server in a loop.
    if not truthy(flags.get("enable_grpc_healthcheck_service")):
        yield "livenessProbe is a gRPC probe, but --enable_grpc_healthcheck_service=true is not set"
    if number is not None and "port" in flags and str(number) != flags["port"]:
        yield f"livenessProbe grpc port {number} is not the gRPC port (--port={flags['port']})"
    # TF Serving registers only "" (the server) and its two service names.
    service = liveness["grpc"].get("service", "")
    if service not in ("", *TF_SERVING_SERVICES):
        yield f'livenessProbe grpc service {service!r} is not registered by TF Serving (use "" for the server)'


def _check_termination(obj: dict, pod_spec: dict, container: dict, flags: dict[str, str]) -> Iterator[str]:
    """TF Serving ignores SIGTERM, so the grace period must cover the preStop delay and the drain."""
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    delay = None
    if "sleep" in pre_stop:
        delay = int(pre_stop["sleep"].get("seconds", 0))
    elif "exec" in pre_stop:
        command = pre_stop["exec"].get("command") or []
        numbers = [int(x) for x in command if str(x).isdigit()]
        if command and Path(str(command[0])).name == "sleep" and numbers:
            delay = numbers[0]
    if delay is None:
        yield (
            f"{describe_container(obj, container)}: no preStop sleep "
            "(the Pod would be killed while still in the Service's endpoints)"
        )
        return
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    drain = delay + int(flags.get("rest_api_timeout_in_ms", "30000")) // 1000
    if grace <= drain:
        yield (
            f"{describe(obj)}: terminationGracePeriodSeconds {grace} must exceed the preStop sleep ({delay}s) plus "
            f"the REST timeout ({drain - delay}s): TF Serving ignores SIGTERM and is killed when the period ends"
        )
