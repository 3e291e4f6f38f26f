"""Kubernetes semantics over rendered objects: Pod templates, selectors, ports, mounts and the environment.

Every check reads objects through these helpers, so the rules (how a selector matches, how $(VAR) expands, which
mount serves a path) are written once.
"""

from __future__ import annotations

import math
import re

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
VAR_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def describe(obj: dict) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def describe_container(obj: dict, container: dict) -> str:
    return f"{describe(obj)} container {container.get('name')}"


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o.get("kind") == kind]


def pod_template(obj: dict) -> dict | None:
    """The Pod (template) an object runs, {} if it has none yet, None if the kind runs no Pods."""
    if obj.get("kind") == "Pod":
        return {"metadata": obj.get("metadata") or {}, "spec": obj.get("spec") or {}}
    if obj.get("kind") in POD_TEMPLATE_KINDS:
        return ((obj.get("spec") or {}).get("template")) or {}
    if obj.get("kind") == "CronJob":
        return (((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    if obj.get("kind") == "TFJob":  # Kubeflow's: the Pods of its (first) replica type, e.g. Worker
        replicas = list(((obj.get("spec") or {}).get("tfReplicaSpecs") or {}).values())
        return (replicas[0].get("template") or {}) if replicas else {}
    return None


def pod_containers(obj: dict) -> list[dict]:
    """The containers, then the init containers (native sidecars included), of an object's Pod template."""
    spec = (pod_template(obj) or {}).get("spec") or {}
    return (spec.get("containers") or []) + (spec.get("initContainers") or [])


def template_labels(template: dict) -> dict | None:
    return (template.get("metadata") or {}).get("labels")


def service_selects(service: dict, labels: dict | None) -> bool:
    """A Service's spec.selector (plain labels) against a Pod's labels; a Service without one selects no Pod."""
    selector = (service.get("spec") or {}).get("selector")
    return bool(selector) and selector_matches({"matchLabels": selector}, labels)


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
    """A CPU quantity ("500m", 2) in cores, None if absent or not a number."""
    if quantity is None:
        return None
    text = str(quantity)
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def is_tf_serving(container: dict) -> bool:
    command = container.get("command") or []
    return bool(command and command[0].endswith("tensorflow_model_server")) or str(
        container.get("image", "")
    ).startswith("tensorflow/serving")


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


def pod_volumes(pod_spec: dict) -> dict[str, dict]:
    return {v.get("name"): v for v in pod_spec.get("volumes") or []}


def mounted_configmap_file(
    path: str, pod_spec: dict, container: dict, objects: list[dict]
) -> tuple[str | None, str]:
    """The content of `path` if it lies in a mounted ConfigMap volume, else (None, reason)."""
    best = None
    for mount in container.get("volumeMounts") or []:
        mount_path = mount.get("mountPath", "").rstrip("/")
        if path.startswith(mount_path + "/") and (best is None or len(mount_path) > len(best[0])):
            best = (mount_path, mount)
    if best is None:
        return None, f"{path} is on no mounted volume"
    mount_path, mount = best
    volume = pod_volumes(pod_spec).get(mount.get("name")) or {}
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


def expand(text: str, env: dict[str, str]) -> tuple[str, list[str]]:
    """`text` with each $(VAR) of `env` substituted (as the kubelet does), and the names `env` lacks."""
    missing: list[str] = []

    def sub(match: re.Match) -> str:
        if match.group(1) in env:
            return env[match.group(1)]
        missing.append(match.group(1))
        return match.group(0)

    return VAR_REF.sub(sub, text), missing
