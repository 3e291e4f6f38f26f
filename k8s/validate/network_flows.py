"""The project's network contract, checked with the NetworkPolicy evaluator (netpol) on one render: who must reach
the serving Pods and who must not, and where Pods may connect to.

The peers outside the render are the ones docs/kubernetes.md (Security) documents: client namespaces carry
CLIENT_LABEL, Prometheus is the Prometheus Operator's Pods in the `monitoring` namespace. Change them here and in
k8s/base/networkpolicy*.yaml together.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from . import netpol
from .netpol import Endpoint
from .objects import (
    by_kind,
    describe,
    is_tf_serving,
    pod_containers,
    resolve_env,
    resolve_port,
    service_selects,
)
from .tf_serving import tfs_flags

CLIENT_LABEL = ("detserve.io/client", "true")
# A Pod of a client namespace, a Pod of a namespace without the label, and Prometheus.
CLIENT = netpol.pod("client", "client-app", namespace_labels=dict([CLIENT_LABEL]))
STRANGER = netpol.pod("stranger", "other-app")
PROMETHEUS = netpol.pod(
    "prometheus",
    "monitoring",
    {"app.kubernetes.io/name": "prometheus", "app.kubernetes.io/managed-by": "prometheus-operator"},
)
KUBE_DNS = netpol.pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, ports={"dns": (53, "UDP")})
# TEST-NET-3 (RFC 5737): stands for storage.googleapis.com, s3.<region>.amazonaws.com, sts.
INTERNET_HTTPS = netpol.external("203.0.113.10", "an internet address")
# Credential endpoints of the Pod identity (sources in k8s/components/model-sync/networkpolicy-model-sync.yaml).
CREDENTIAL_ENDPOINTS = (
    (netpol.external("169.254.169.254", "the GKE metadata server"), 80),
    (netpol.external("169.254.169.252", "the GKE metadata server (node redirect)"), 988),
    (netpol.external("169.254.170.23", "the EKS Pod Identity agent"), 80),
    (netpol.external("fd00:ec2::23", "the EKS Pod Identity agent (IPv6)"), 80),
)
# The sidecar that fetches models from object storage (k8s/components/model-sync).
MODEL_SYNC_CONTAINER = "model-sync"


def check_flows(objects: list[dict]) -> Iterator[str]:
    """The serving Pods' clients, scraper and egress, and every Service call named in a Pod's env."""
    policies = netpol.network_policies(objects)
    endpoints = netpol.pod_endpoints(objects)
    for obj, endpoint in endpoints:
        serving = [c for c in pod_containers(obj) if is_tf_serving(c)]
        if serving:
            yield from _serving_ingress(obj, endpoint, serving[0], objects, policies)
            yield from _serving_egress(obj, endpoint, policies)
    yield from _service_calls(objects, endpoints, policies)


def _blame(policies: list[dict], subject: Endpoint, peer: Endpoint) -> list[dict]:
    """The policies that admit `peer` to `subject` on some port: the ones to fix when a port is missing."""
    return netpol.allowing_policies(policies, subject, peer, "Ingress", None)


def _serving_ingress(
    obj: dict, endpoint: Endpoint, container: dict, objects: list[dict], policies: list[dict]
) -> Iterator[str]:
    what = describe(obj)
    ports = sorted({p["containerPort"] for p in container.get("ports") or []})
    flags, _ = tfs_flags(container, resolve_env(container, objects))
    metrics_port = resolve_port(flags.get("rest_api_port", "http"), container)
    client = f"clients (namespaces labelled {CLIENT_LABEL[0]}={CLIENT_LABEL[1]})"
    for number in ports:
        if not netpol.allowed(policies, CLIENT, endpoint, number):
            blamed = _blame(policies, endpoint, CLIENT)
            for policy in blamed:
                yield f"{describe(policy)}: does not admit serving port {number} of {what} from {client}"
            if not blamed:
                yield f"{what}: no NetworkPolicy admits {client} to serving port {number}"
        if netpol.allowed(policies, STRANGER, endpoint, number):
            yield (
                f"{what}: serving port {number} admits Pods of a namespace without the {CLIENT_LABEL[0]} label "
                f"(policies: {_names(_blame(policies, endpoint, STRANGER)) or 'none isolates the Pods'})"
            )
        if number != metrics_port:
            # A policy open to every namespace is reported above; this is a scraper's allow that is too wide.
            wide = netpol.allowing_policies(policies, endpoint, STRANGER, "Ingress", number)
            for policy in netpol.allowing_policies(policies, endpoint, PROMETHEUS, "Ingress", number):
                if policy not in wide:
                    yield (
                        f"{describe(policy)}: admits Prometheus to port {number} of {what}; it scrapes the REST "
                        f"port {metrics_port} only"
                    )
    if metrics_port is not None and not netpol.allowed(policies, PROMETHEUS, endpoint, metrics_port):
        yield (
            f"{what}: Prometheus (namespace monitoring, app.kubernetes.io/name=prometheus) cannot reach the "
            f"metrics on the REST port {metrics_port}"
        )


def _serving_egress(obj: dict, endpoint: Endpoint, policies: list[dict]) -> Iterator[str]:
    what = describe(obj)
    fetches = any(c.get("name") == MODEL_SYNC_CONTAINER for c in pod_containers(obj))
    https = netpol.allowed(policies, endpoint, INTERNET_HTTPS, 443)
    if not fetches:
        if https:
            yield f"{what}: may connect to the internet on 443; it reads models from its volume (DNS egress only)"
        return
    if not netpol.allowed(policies, endpoint, KUBE_DNS, 53, "UDP"):
        yield f"{what}: container {MODEL_SYNC_CONTAINER} cannot resolve names (UDP 53 egress is denied)"
    if not https:
        yield f"{what}: container {MODEL_SYNC_CONTAINER} cannot reach object storage (HTTPS egress to 443 is denied)"
    for address, port in CREDENTIAL_ENDPOINTS:
        if not netpol.allowed(policies, endpoint, address, port):
            yield (
                f"{what}: container {MODEL_SYNC_CONTAINER} cannot fetch credentials from {address.name} "
                f"({address.ip} port {port}): egress is denied"
            )


def _service_calls(
    objects: list[dict], endpoints: list[tuple[dict, Endpoint]], policies: list[dict]
) -> Iterator[str]:
    """A Pod whose env names a Service of the render (`name:port`, `name.namespace.svc...:port`) must reach it."""
    for svc in by_kind(objects, "Service"):
        name = svc["metadata"]["name"]
        address = re.compile(rf"(?<![\w.-]){re.escape(name)}(?:\.[\w.-]+)?:(\d+)")
        spec = svc.get("spec") or {}
        targets = [
            (o, e) for o, e in endpoints if service_selects(svc, e.labels)
        ]
        for obj, source in endpoints:
            for container in pod_containers(obj):
                for item in container.get("env") or []:
                    for match in address.finditer(str(item.get("value", ""))):
                        port = next(
                            (p for p in spec.get("ports") or [] if p.get("port") == int(match[1])), None
                        )
                        if port is None:
                            continue  # a wrong port is the Service checks' business
                        yield from _call(obj, source, svc, port, targets, item["name"], policies)


def _call(
    obj: dict, source: Endpoint, svc: dict, port: dict, targets: list, env: str, policies: list[dict]
) -> Iterator[str]:
    for target_obj, target in targets:
        container_port = next(
            (
                n
                for c in pod_containers(target_obj)
                if (n := resolve_port(port.get("targetPort", port["port"]), c))
            ),
            None,
        )
        if container_port is None:
            continue
        protocol = port.get("protocol", "TCP")
        where = f"{describe(obj)} calls {describe(svc)} port {port['port']} ({env})"
        if not netpol.side_allows(policies, source, target, "Egress", container_port, protocol):
            yield f"{where}, but its NetworkPolicies deny egress to {describe(target_obj)} port {container_port}"
        if not netpol.side_allows(policies, target, source, "Ingress", container_port, protocol):
            yield f"{where}, but the NetworkPolicies of {describe(target_obj)} do not admit it on {container_port}"


def _names(policies: list[dict]) -> str:
    return ", ".join(describe(p) for p in policies)
