"""Multi-node training (k8s/jobs/train-multinode): the numbers and names every worker must agree on.

A MultiWorkerMirroredStrategy cluster only forms when each Pod's TF_CONFIG lists every worker at an address that
resolves and admits the others. detserve builds TF_CONFIG from DETSERVE_WORKERS, DETSERVE_WORKER_ADDRESS and the
Pod's completion index (training/distribution.py); this check holds the manifests to the same rules: the worker
count is the Job's completions and parallelism, each address is `<job>-<index>.<subdomain>:<port>` of a headless
Service that selects the Pods and targets that port, the NetworkPolicies let the workers call each other there, and
every Pod asks for the same GPUs it is limited to. A TFJob (k8s/jobs/train-tfjob) gets TF_CONFIG from the Training
Operator, which needs its container and port names; its workers must reach each other there too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from detserve.training.distribution import ADDRESS_ENV, WORKERS_ENV

from . import netpol
from .objects import (
    by_kind,
    describe,
    pod_containers,
    resolve_env,
    resolve_port,
    service_selects,
    template_labels,
)

ADDRESS = re.compile(r"^(?P<host>[a-z0-9-]+)-\{index\}\.(?P<subdomain>[a-z0-9-]+):(?P<port>\d+)$")
GPU = "nvidia.com/gpu"


# Kubeflow's Training Operator finds a TFJob's TensorFlow container and port by these names, and writes TF_CONFIG
# with the workers at that port.
TFJOB_CONTAINER = "tensorflow"
TFJOB_PORT = "tfjob-port"


def check_multinode_training(objects: list[dict]) -> list[str]:
    errors: list[str] = []
    for job in by_kind(objects, "Job"):
        for container in pod_containers(job):
            env = resolve_env(container, objects)
            if WORKERS_ENV in env:
                errors += list(_check_worker(job, container, env, objects))
    for tfjob in by_kind(objects, "TFJob"):
        errors += list(_check_tfjob(tfjob, objects))
    return errors


def _check_tfjob(tfjob: dict, objects: list[dict]) -> Iterator[str]:
    containers = {c.get("name"): c for c in pod_containers(tfjob)}
    container = containers.get(TFJOB_CONTAINER)
    if container is None:
        yield (f"{describe(tfjob)}: no container named {TFJOB_CONTAINER} (has {sorted(containers)}): the Training "
               "Operator would give none of them TF_CONFIG")
        return
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    if TFJOB_PORT not in ports:
        yield f"{describe(tfjob)}: container {TFJOB_CONTAINER} has no port named {TFJOB_PORT}, where the workers meet"
        return
    yield from _check_trains_multi_worker(f"{describe(tfjob)} container {TFJOB_CONTAINER}", container)
    endpoint = next(e for o, e in netpol.pod_endpoints(objects) if o is tfjob)
    if not netpol.allowed(netpol.network_policies(objects), endpoint, endpoint, ports[TFJOB_PORT]):
        yield (f"{describe(tfjob)}: the NetworkPolicies do not let one worker reach another on port "
               f"{ports[TFJOB_PORT]} ({TFJOB_PORT})")


def _check_trains_multi_worker(what: str, container: dict) -> Iterator[str]:
    if "--strategy multi-worker" not in " ".join(map(str, (container.get("args") or []) + (container.get("command") or []))):
        yield f"{what}: is one of several workers but does not train with --strategy multi-worker"
    resources = container.get("resources") or {}
    gpus = [(resources.get(kind) or {}).get(GPU) for kind in ("requests", "limits")]
    if gpus[0] != gpus[1]:
        yield f"{what}: {GPU} requests {gpus[0]} and limits {gpus[1]} must be equal (extended resources)"


def _check_worker(job: dict, container: dict, env: dict[str, str], objects: list[dict]) -> Iterator[str]:
    what = f"{describe(job)} container {container.get('name')}"
    spec, template = job.get("spec") or {}, (job.get("spec") or {}).get("template") or {}
    pod_spec = template.get("spec") or {}
    if spec.get("completionMode") != "Indexed":
        yield f"{what}: {WORKERS_ENV} needs an Indexed Job (completionMode: Indexed) for each Pod's worker index"
    counts = {"completions": spec.get("completions"), "parallelism": spec.get("parallelism"), WORKERS_ENV: env[WORKERS_ENV]}
    if len({str(v) for v in counts.values()}) != 1:
        yield f"{what}: the worker count must agree: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    yield from _check_trains_multi_worker(what, container)
    workers = int(env[WORKERS_ENV]) if env[WORKERS_ENV].isdigit() else 0
    if spec.get("backoffLimit", 6) < workers:
        yield (f"{what}: backoffLimit {spec.get('backoffLimit', 6)} is below the {workers} workers: one failure "
               f"stops every worker and costs {workers} of it, so not even one retry would run")
    match = ADDRESS.match(env.get(ADDRESS_ENV, ""))
    if match is None:
        yield f"{what}: {ADDRESS_ENV} {env.get(ADDRESS_ENV)!r} must be <job name>-{{index}}.<subdomain>:<port>"
        return
    name = job["metadata"]["name"]
    if match["host"] != name:
        yield f"{what}: {ADDRESS_ENV} names host {match['host']}-{{index}}, but the Job's Pods are {name}-<index>"
    subdomain, port = pod_spec.get("subdomain"), int(match["port"])
    if subdomain != match["subdomain"]:
        yield f"{what}: {ADDRESS_ENV} names subdomain {match['subdomain']}, the Pod template's is {subdomain}"
    container_ports = {p["containerPort"] for p in container.get("ports") or []}
    if port not in container_ports:
        yield f"{what}: {ADDRESS_ENV} port {port} is not a container port ({sorted(container_ports)})"
    labels = template_labels(template)
    services = [s for s in by_kind(objects, "Service") if s["metadata"]["name"] == match["subdomain"]]
    if not services:
        yield f"{what}: no Service {match['subdomain']} in the render: the worker addresses would not resolve"
    for service in services:
        service_spec = service.get("spec") or {}
        if service_spec.get("clusterIP") != "None":
            yield f"{describe(service)}: must be headless (clusterIP: None) to give each worker a DNS name"
        if not service_selects(service, labels):
            yield f"{describe(service)}: does not select the Pods of {describe(job)}"
        targets = {resolve_port(p.get("targetPort", p.get("port")), container) for p in service_spec.get("ports") or []}
        if port not in targets:
            yield f"{describe(service)}: targets ports {sorted(t for t in targets if t)}, not the workers' {port}"
    endpoint = next(e for o, e in netpol.pod_endpoints(objects) if o is job)
    if not netpol.allowed(netpol.network_policies(objects), endpoint, endpoint, port):
        yield f"{what}: the NetworkPolicies do not let one worker reach another on port {port}"
