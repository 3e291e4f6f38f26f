"""The project's checks of one rendered target: what the schema cannot say about the manifests."""

from __future__ import annotations

from pathlib import Path

from .hardware import check_hardware
from .networking import check_networking
from .objects import is_tf_serving, pod_template
from .pod_security import check_pod_security
from .serving_configs import check_configmaps_match_files
from .stack import check_namespace, check_serving_stack, check_workload_wiring
from .targets import Target
from .tf_serving import check_tf_serving
from .training_jobs import check_multinode_training


def project_checks(objects: list[dict], target: Target, serving_dir: Path, shared: list[dict]) -> list[str]:
    """All project checks for one rendered target. `shared` holds objects other targets create (claims, configs)."""
    errors: list[str] = []
    if target.name.startswith("overlays/"):
        errors += check_serving_stack(objects)
    # Jobs may use the serving stack's claims.
    context = list(objects) + [o for o in shared if o.get("kind") == "PersistentVolumeClaim"]
    for obj in objects:
        template = pod_template(obj)
        if template is None:
            continue
        pod_spec = template.get("spec") or {}
        errors += check_pod_security(obj, pod_spec, context)
        for container in pod_spec.get("containers") or []:
            if is_tf_serving(container):
                errors += check_tf_serving(obj, pod_spec, container, objects, target.hardware)
            else:
                errors += check_hardware(obj, pod_spec, container, target.hardware, None)
    errors += check_networking(objects)
    errors += check_workload_wiring(objects)
    errors += check_configmaps_match_files(objects, serving_dir)
    errors += check_namespace(objects)
    errors += check_multinode_training(objects)
    return errors
