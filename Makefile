# detserve: from a labelled image folder to a served detector.
# `make demo` runs the whole job on a synthetic dataset; `make test` runs the test suite.
# Every target that needs Python sets the environment up first (idempotent, see `setup`).

SHELL := /bin/bash
PYTHON ?= python3
# requirements/*.txt are locked for CPython $(LOCK_PYTHON) on linux x86_64 (pyproject.toml's requires-python says
# the same): `make setup` refuses another Python; `make setup PYTHON=python3.11` picks one.
LOCK_PYTHON := 3.11
VENV ?= .venv
BIN := $(VENV)/bin
DETSERVE := $(BIN)/detserve

# Where the pipeline reads and writes; override on the command line, e.g.
#   make data DATA_FORMAT=voc IMAGES=path/images ANNOTATIONS=path/annotations DATA=data/mine
RUN ?= runs
SYNTH ?= $(RUN)/synthetic
IMAGES ?= $(SYNTH)/images
ANNOTATIONS ?= $(SYNTH)/annotations
DATA_FORMAT ?= voc
CLASS_MAP ?=
DATA ?= $(RUN)/data
MODEL_DIR ?= $(RUN)/model
# Training options, passed to `detserve train` only when set: empty = its defaults (docs/training.md), e.g.
#   make train STEPS=5000 BATCH_SIZE=16 DEPTH_MULTIPLIER=0.35     or     make train TIME_BUDGET=2h
STEPS ?=
TIME_BUDGET ?=
EVAL_EVERY ?=
BATCH_SIZE ?=
DEPTH_MULTIPLIER ?=
# A Keras MobileNetV2 ImageNet .h5 (alpha = DEPTH_MULTIPLIER) or `imagenet` to download it (sha256-checked,
# docs/training.md); empty = from scratch.
BACKBONE_WEIGHTS ?=
TRAIN_FLAGS ?=
TRAIN_OPTIONS = $(strip $(if $(STEPS),--steps $(STEPS)) $(if $(TIME_BUDGET),--time-budget $(TIME_BUDGET)) \
	$(if $(EVAL_EVERY),--eval-every $(EVAL_EVERY)) $(if $(BATCH_SIZE),--batch-size $(BATCH_SIZE)) \
	$(if $(DEPTH_MULTIPLIER),--depth-multiplier $(DEPTH_MULTIPLIER)) \
	$(if $(BACKBONE_WEIGHTS),--backbone-weights $(BACKBONE_WEIGHTS)) $(TRAIN_FLAGS))
# The TF Serving model repository `make export` writes versions into: $(REPOSITORY)/$(MODEL_NAME)/<version>/.
REPOSITORY ?= models
MODEL_NAME ?= detector
# The export's quality gate (docs/export.md), passed only when set: nothing is published unless the candidate's
# mAP (MIN_MAP) and/or mAP@.50 (MIN_MAP50) on GATE_DATA (default: $(DATA)) reach them, e.g. make export MIN_MAP=0.3
MIN_MAP ?=
MIN_MAP50 ?=
GATE_DATA ?=
GATE_OPTIONS = $(strip $(if $(MIN_MAP),--min-map $(MIN_MAP)) $(if $(MIN_MAP50),--min-map50 $(MIN_MAP50)) \
	$(if $(MIN_MAP)$(MIN_MAP50)$(GATE_DATA),--data $(or $(GATE_DATA),$(DATA))))
BATCHING_CONFIGS ?= serving/batching.config
# Extra `detserve serve` flags for `make serve`, e.g. SERVE_FLAGS="--no-enable-batching --port 9500".
SERVE_FLAGS ?=

# The demo: small enough for a 2-core laptop, big enough to learn the synthetic shapes.
DEMO_IMAGES ?= 240
DEMO_STEPS ?= 600
DEMO_DEPTH_MULTIPLIER ?= 0.35

PYTEST_FLAGS ?=

.PHONY: serve-check help setup lock test lint demo synth data train evaluate export export-tflite serve bench bench-serving bench-batching clean web-demo

help:
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

# $(call check_python,INTERPRETER,ADVICE): one line naming what was found unless it is CPython $(LOCK_PYTHON).
# Plain %-formatting so that even an old Python prints the message rather than a SyntaxError.
check_python = @$(1) -c 'import platform, sys; found = "%s %s" % (platform.python_implementation(), platform.python_version()); \
	sys.exit(0 if found.startswith("CPython $(LOCK_PYTHON).") else "make setup: requirements/*.txt are locked for CPython $(LOCK_PYTHON), but $(1) is %s; $(2)" % found)'

$(BIN)/activate:
	$(call check_python,$(PYTHON),pick another with: make setup PYTHON=python$(LOCK_PYTHON))
	$(PYTHON) -m venv $(VENV)

# The stamp is rebuilt when any lock changes. Every package is pinned by version and sha256 (requirements/*.txt,
# written by `make lock`), wheels only; TFOD2's sdist and the editable installs are built with the pinned
# setuptools (--no-build-isolation), so no build dependency is fetched unchecked either.
$(VENV)/.installed: $(BIN)/activate requirements/runtime.txt requirements/dev.txt requirements/no-deps.txt pyproject.toml client/pyproject.toml
	$(call check_python,$(BIN)/python,remove $(VENV) and run: make setup PYTHON=python$(LOCK_PYTHON))
	$(BIN)/pip install --quiet --require-hashes --only-binary :all: -r requirements/runtime.txt -r requirements/dev.txt
	# These declare a dependency on the full `tensorflow` package (lvis on opencv-python): installed without
	# dependencies next to tensorflow-cpu, pinned by hash.
	$(BIN)/pip install --quiet --no-deps --no-build-isolation --require-hashes -r requirements/no-deps.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e client -e .
	$(BIN)/python -m detserve.training.check_install
	touch $@

setup: $(VENV)/.installed ## Create .venv with the locked stack (one TensorFlow: tensorflow-cpu); CPython 3.11 only

# uv resolves against its default index (PyPI; --no-config: no uv.toml redirects it) and writes the sha256 of every
# file of each pinned version, sdist and all platforms' wheels. Existing pins (and their hashes) are kept:
# LOCK_FLAGS="--upgrade-package NAME" (or --upgrade) re-resolves them.
UV_COMPILE = $(BIN)/uv pip compile --quiet --no-config --generate-hashes --python-version $(LOCK_PYTHON) \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock'

lock: $(VENV)/.installed ## Re-resolve requirements/*.in into the hashed locks requirements/*.txt (uv pip compile)
	$(UV_COMPILE) $(LOCK_FLAGS) -o requirements/runtime.txt requirements/runtime.in
	$(UV_COMPILE) $(LOCK_FLAGS) -c requirements/runtime.txt -o requirements/dev.txt requirements/dev.in
	$(UV_COMPILE) $(LOCK_FLAGS) --no-deps -o requirements/no-deps.txt requirements/no-deps.in

test: setup ## Run the test suite
	$(BIN)/python -m pytest $(PYTEST_FLAGS)

lint: setup ## ruff on the Python code
	$(BIN)/ruff check training export serving client k8s tests benchmarks

synth: setup ## Write a synthetic VOC dataset (shapes on textured backgrounds) to $(SYNTH)
	$(DETSERVE) synth --out $(SYNTH) --images $(DEMO_IMAGES) --seed 0

data: setup ## Validate a dataset and write TFRecords + label_map.pbtxt to $(DATA)
	$(DETSERVE) data --format $(DATA_FORMAT) --images $(IMAGES) --annotations $(ANNOTATIONS) --out $(DATA) \
		$(if $(CLASS_MAP),--class-map $(CLASS_MAP),)

train: setup ## Train SSD MobileNetV2 FPN-Lite on $(DATA) into $(MODEL_DIR) (resumes)
	$(DETSERVE) train --data $(DATA) --model-dir $(MODEL_DIR) $(TRAIN_OPTIONS)

evaluate: setup ## COCO metrics of the latest checkpoint in $(MODEL_DIR) on the test split
	$(DETSERVE) evaluate --model-dir $(MODEL_DIR)

demo: setup ## The whole job on the embedded default: synthetic data -> train -> evaluate -> export -> serve + detect
	$(MAKE) synth
	$(MAKE) data
	$(MAKE) train STEPS=$(DEMO_STEPS) DEPTH_MULTIPLIER=$(DEMO_DEPTH_MULTIPLIER)
	$(MAKE) evaluate
	$(MAKE) export
	$(MAKE) serve-check
	@echo
	@echo "make demo: done. $(REPOSITORY)/$(MODEL_NAME) holds the version just exported and verified. To see it answer in a browser:"
	@echo "  make serve        # terminal 1: the embedded server (gRPC :8500, REST :8501)"
	@echo "  make web-demo DEMO_EXAMPLES='$$(ls $(IMAGES)/*.jpg 2>/dev/null | head -3 | xargs)'"
	@echo "                    # terminal 2: then open http://127.0.0.1:7860 (upload a photo or click an example)"

export: setup ## Export $(MODEL_DIR) (its best/ checkpoint from validation, else the latest) as a new version of $(REPOSITORY)/$(MODEL_NAME)
	$(DETSERVE) export --model-dir $(MODEL_DIR) --repository $(REPOSITORY) --name $(MODEL_NAME) $(GATE_OPTIONS)

# A .tflite for phones and edge boxes (docs/export.md): QUANTIZE=float16 or int8 (calibrated on $(DATA)'s train split).
QUANTIZE ?= float16
TFLITE_DIR ?= tflite
export-tflite: setup ## Export $(MODEL_DIR) (best/, else the latest checkpoint) as $(TFLITE_DIR)/$(MODEL_NAME)-$(QUANTIZE).tflite
	$(DETSERVE) export --format tflite --quantize $(QUANTIZE) --model-dir $(MODEL_DIR) --name $(MODEL_NAME) \
		--tflite-dir $(TFLITE_DIR) $(if $(filter int8,$(QUANTIZE)),--calibration-data $(DATA))

serve: setup ## Serve $(REPOSITORY) with serving/*.config on the embedded server (gRPC :8500, REST :8501)
	$(DETSERVE) serve --repository $(REPOSITORY) $(SERVE_FLAGS)

# `make bench TF_SERVING=tensorflow/serving:2.19.1-gpu` measures TF Serving's container (docker) instead.
TF_SERVING ?=
bench: setup ## Where the time goes, one run: graph, gRPC/REST vs in-process and a naive wrapper, cold start, swap, export, training (docs/performance.md)
	$(BIN)/python benchmarks/speed.py --repository $(REPOSITORY) --model $(MODEL_NAME) \
		$(if $(wildcard $(MODEL_DIR)/pipeline.config),--model-dir $(MODEL_DIR)) $(if $(wildcard $(DATA)/label_map.pbtxt),--data $(DATA)) $(if $(TF_SERVING),--tf-serving $(TF_SERVING)) $(if $(BASELINE),--baseline $(BASELINE))

bench-serving: setup ## Embedded server vs in-process SavedModel: images/s, p50/p99 (an export in $(REPOSITORY))
	$(BIN)/python benchmarks/serving_benchmark.py --repository $(REPOSITORY) --model $(MODEL_NAME)

bench-batching: setup ## A/B BatchingParameters files on the embedded server (BATCHING_CONFIGS="a.config b.config")
	$(BIN)/python benchmarks/batching_configs.py --repository $(REPOSITORY) --model $(MODEL_NAME) $(BATCHING_CONFIGS)

serve-check: setup ## Start the embedded server on $(REPOSITORY), detect on a synthetic image over gRPC and REST, stop it
	@set -e; $(DETSERVE) serve --repository $(REPOSITORY) & pid=$$!; \
	trap 'kill -TERM $$pid 2>/dev/null; wait $$pid' EXIT; \
	$(DETSERVE) status --server grpc://localhost:8500 --model $(MODEL_NAME) --wait 180; \
	$(DETSERVE) detect $(firstword $(wildcard $(IMAGES)/*.jpg)) --server grpc://localhost:8500 --model $(MODEL_NAME) --out $(RUN)/detections; \
	$(DETSERVE) detect $(firstword $(wildcard $(IMAGES)/*.jpg)) --server http://localhost:8501 --model $(MODEL_NAME) --json

# The web demo's server and example images (files or directories), e.g. DEMO_SERVER=http://localhost:8501.
DEMO_SERVER ?= grpc://localhost:8500
DEMO_EXAMPLES ?=
web-demo: setup ## Web demo (Gradio, http://127.0.0.1:7860) on $(MODEL_NAME) at $(DEMO_SERVER); start `make serve` first
	$(DETSERVE) demo --server $(DEMO_SERVER) --model $(MODEL_NAME) $(foreach e,$(DEMO_EXAMPLES),--examples $(e))

clean: ## Remove generated runs (keeps .venv)
	rm -rf $(RUN)

# Kubernetes: k8s-validate (offline render + strict schema + project checks), deploy.
include k8s/k8s.mk
