"""GPU or CPU: the container's resources, node selection, tolerations, image and TF Serving's GPU memory flag."""

from __future__ import annotations

from collections.abc import Iterator

from .images import image_tag
from .objects import describe, describe_container, is_tf_serving

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"


def check_hardware(
    obj: dict, pod_spec: dict, container: dict, hardware: str | None, flags: dict | None
) -> Iterator[str]:
    """`hardware` is the target's ("gpu", "cpu", or None: judge by image and limits); `flags` are TF Serving's."""
    where = describe_container(obj, container)
    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    gpus = limits.get(GPU_RESOURCE)
    tag = image_tag(container)
    gpu_image = tag.endswith("-gpu") or tag.endswith("-gpu-jupyter")
    wants_gpu = hardware == "gpu" or (hardware is None and (gpu_image or gpus is not None))
    if not wants_gpu:
        if gpus is not None or GPU_RESOURCE in requests:
            yield f"{where}: requests a GPU on a {hardware or 'CPU'} target"
        if gpu_image and hardware == "cpu":
            yield f"{where}: GPU image {container.get('image')} on the cpu target"
        if flags and "per_process_gpu_memory_fraction" in flags:
            yield f"{where}: --per_process_gpu_memory_fraction on a CPU target"
        return
    if gpus is None or int(str(gpus)) < 1:
        yield f"{where}: no {GPU_RESOURCE} limit (GPU workloads must set resources.limits.{GPU_RESOURCE} >= 1)"
    if GPU_RESOURCE in requests and str(requests[GPU_RESOURCE]) != str(gpus):
        yield f"{where}: {GPU_RESOURCE} request {requests[GPU_RESOURCE]} differs from its limit {gpus}"
    yield from _check_gpu_placement(obj, pod_spec)
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


def _check_gpu_placement(obj: dict, pod_spec: dict) -> Iterator[str]:
    """A GPU Pod must select GPU nodes and tolerate their taint."""
    node_selector = pod_spec.get("nodeSelector") or {}
    node_affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity")
    if not node_selector and not node_affinity:
        yield f"{describe(obj)}: GPU Pod without nodeSelector or node affinity for GPU nodes"
    elif (
        not any("gpu" in key.lower() or "accelerator" in key.lower() for key in node_selector)
        and not node_affinity
    ):
        yield f"{describe(obj)}: nodeSelector selects no GPU node label"
    if not any(
        (t.get("operator") == "Exists" and t.get("key") in (None, "", GPU_TAINT_KEY))
        or (t.get("key") == GPU_TAINT_KEY and t.get("operator") in (None, "Equal"))
        for t in pod_spec.get("tolerations") or []
        if t.get("effect") in (None, "", "NoSchedule")
    ):
        yield f"{describe(obj)}: no toleration for the {GPU_TAINT_KEY} NoSchedule taint of GPU nodes"
