"""Every Pod: its service account, and resources and a restricted security context on every container."""

from __future__ import annotations

from collections.abc import Iterator

from .objects import by_kind, describe, pod_volumes


def check_pod_security(obj: dict, pod_spec: dict, objects: list[dict]) -> Iterator[str]:
    """`objects` also holds what other targets create that this Pod may use (the serving stack's claims)."""
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
    volumes = pod_volumes(pod_spec)
    for role, c in containers:
        yield from _check_container(f"{what} {role} {c.get('name')}", c, pod_sc, volumes)
    for volume in volumes.values():
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and claim not in {p["metadata"]["name"] for p in by_kind(objects, "PersistentVolumeClaim")}:
            yield f"{what}: volume {volume.get('name')!r} uses claim {claim!r}, which nothing here creates"


def _check_container(where: str, c: dict, pod_sc: dict, volumes: dict[str, dict]) -> Iterator[str]:
    sc = c.get("securityContext") or {}
    res = c.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    for key in ("cpu", "memory"):
        if key not in requests:
            yield f"{where}: no resources.requests.{key}"
    if "memory" not in limits:
        yield f"{where}: no resources.limits.memory"
    if not (sc.get("runAsNonRoot") or (pod_sc.get("runAsNonRoot") and sc.get("runAsNonRoot") is not False)):
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
