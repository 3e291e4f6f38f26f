"""Offline validation of the Kubernetes deployment and serving images (`make k8s-validate`).

No cluster is needed. For every overlay in k8s/overlays, every job in k8s/jobs, every tool in k8s/tools and every
component in k8s/components (applied on top of overlays/gpu), the validator

1. renders the kustomization with `kubectl kustomize`, exactly as `kubectl apply -k` would (`targets`, `tools`);
2. validates each rendered object with kubernetes-validate in strict mode against one Kubernetes version
   (strict rejects unknown fields such as `replica:`; custom resources are accepted only where a target allows them)
   (`schema`);
3. runs the project's own checks on the rendered objects (`checks` and the modules it calls): resources, probes and
   security context on every container, GPU requests, node selection and tolerations where the hardware is GPU, port
   names and numbers that agree across Deployment, Service, probes and NetworkPolicy, TF Serving flags that exist and
   point at mounted files, the generated ConfigMaps byte-equal to serving/*.config and parseable as TF Serving protos,
   and more;

and then lints the YAML (yamllint --strict) and the Dockerfiles (hadolint) (`lint`). It prints one line per problem
and exits with status 1 if there is any. Run it from the repository root:

    python -m k8s.validate [--kubernetes-version 1.34] [--root DIR] [--no-lint] [--target overlays/gpu ...]
"""
