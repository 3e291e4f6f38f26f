# Kubernetes targets, included from the top-level Makefile:  include k8s/k8s.mk
#   make k8s-validate                 render every overlay, job and component offline; validate (strict) against
#                                     Kubernetes $(K8S_VERSION); project checks; yamllint; hadolint
#   make k8s-render [OVERLAY=gpu]     print what `make deploy` would apply
#   make k8s-diff   [OVERLAY=gpu]     compare it with the cluster of the current kubectl context
#   make deploy     [OVERLAY=gpu]     validate that overlay (images pinned by digest), then kubectl apply -k
#   make pin-images                   write the registries' digests of the tagged images into k8s/**/kustomization.yaml
#   make release VERSION=N            pin the Kubernetes release to version N (serving/models.release.config)
#   make canary  VERSION=M            serve version M as the candidate model detector-canary (models.canary.config)
#   make promote                      release the candidate; make rollout-status prints both
# OVERLAY is gpu (production default), cpu or canary. No cluster is needed except for k8s-diff and deploy.
# The validator is the package k8s/validate/ (python -m k8s.validate), run from the repository root like all of make.

VENV ?= .venv
K8S_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
# The version the manifests are validated against (kubernetes-validate ships schemas for 1.25 to 1.37).
K8S_VERSION ?= 1.34
OVERLAY ?= gpu
KUBECTL ?= $(if $(wildcard $(VENV)/bin/kubectl),$(VENV)/bin/kubectl,kubectl)

.PHONY: k8s-validate k8s-render k8s-diff deploy pin-images release canary promote rollout-status

k8s-validate: ## Render and validate every overlay offline (strict, Kubernetes $(K8S_VERSION)), lint YAML and Dockerfiles
	$(VENV)/bin/python -m k8s.validate --kubernetes-version $(K8S_VERSION) --kubectl $(KUBECTL)

k8s-render: ## Print the manifests of k8s/overlays/$(OVERLAY)
	$(KUBECTL) kustomize $(K8S_DIR)/overlays/$(OVERLAY)

# kubectl diff exits 1 when there are differences; that is an answer, not a failure.
k8s-diff: ## Diff k8s/overlays/$(OVERLAY) against the current kubectl context
	$(KUBECTL) diff -k $(K8S_DIR)/overlays/$(OVERLAY) || test $$? -eq 1

deploy: ## Validate, then kubectl apply -k k8s/overlays/$(OVERLAY) (gpu|cpu|canary) and wait for the rollout
	$(VENV)/bin/python -m k8s.validate --kubernetes-version $(K8S_VERSION) --kubectl $(KUBECTL) \
		--no-lint --require-digests --target overlays/$(OVERLAY)
	$(KUBECTL) apply -k $(K8S_DIR)/overlays/$(OVERLAY)
	$(KUBECTL) -n detserve rollout status deployment/detserve-serving --timeout=15m

# Needs the registries (Docker Hub) online; run it when a tag in an `images:` entry changes, and commit the result.
pin-images: ## Pin every tagged image of k8s/ by its registry digest (online)
	$(VENV)/bin/python -m k8s.validate.pin_images

# The release and canary configs are written by k8s/rollout.py from two numbers, so the overlays cannot disagree.
release: ## Pin the Kubernetes release to VERSION (then: make deploy)
	$(VENV)/bin/python -m k8s.rollout release $(VERSION)

canary: ## Serve VERSION as the candidate model <name>-canary beside the release (then: make deploy OVERLAY=canary)
	$(VENV)/bin/python -m k8s.rollout canary $(VERSION)

promote: ## Release the candidate version (then: make deploy)
	$(VENV)/bin/python -m k8s.rollout promote

rollout-status: ## Print the released and the candidate version
	$(VENV)/bin/python -m k8s.rollout status
