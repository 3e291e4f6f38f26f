# Training image: TensorFlow 2.21 with CUDA (the official GPU image) plus the detserve kit and its pinned
# dependencies, for `detserve data|train|evaluate|export` on GPU nodes (k8s/jobs/train).
#   docker build -f docker/training.Dockerfile -t detserve/training:0.1.0 .     (from the repository root)
FROM tensorflow/tensorflow:2.21.0-gpu

LABEL org.opencontainers.image.title="detserve-training" \
      org.opencontainers.image.description="detserve training and export (TensorFlow 2.21 GPU, TFOD2)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/detserve

# Dependencies first, so that a code change does not reinstall them.
COPY requirements/ requirements/
# runtime.txt (the hashed lock of runtime.in) pins tensorflow-cpu; this base already has the `tensorflow`
# distribution (same 2.21.0, with CUDA). Installing both would put two TensorFlows into one site-packages, so the
# tensorflow-cpu entry (its line and the indented hash lines under it) is dropped here and the base's tensorflow
# satisfies everyone else's requirement on it. Every other package is still pinned by version and sha256.
# The --no-deps group (tf-keras, TFOD2, tf-models-official, tensorflow-serving-api, lvis) is installed by hash,
# without the dependencies it declares, exactly as on CPU.
RUN sed -E '/^tensorflow-cpu==/,/^[^ ]/{/^(tensorflow-cpu==| )/d}' requirements/runtime.txt > /tmp/runtime-gpu.txt \
    && pip install --require-hashes --only-binary :all: -r /tmp/runtime-gpu.txt \
    && pip install --no-deps --no-build-isolation --require-hashes -r requirements/no-deps.txt \
    && rm /tmp/runtime-gpu.txt

# The kit itself: the client distribution (owns the `detserve` command) and the full kit (training, export).
COPY pyproject.toml README.md ./
COPY client/ client/
COPY training/ training/
COPY export/ export/
COPY serving/ serving/
RUN pip install --no-deps -e client -e .

# Same non-root UID/GID as the Kubernetes Job; data, checkpoints and models live on mounted volumes.
USER 10001:10001
ENV HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib

ENTRYPOINT ["detserve"]
CMD ["--help"]
