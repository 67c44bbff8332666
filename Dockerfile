# lossd: PyTorch losses over HTTP (port 8000) and gRPC (port 8001). Two stages: the build stage installs the
# locked dependencies into a virtual environment (/opt/venv, which keeps the pip that venv gives it); the
# runtime stage copies that environment, the service and its user, without the build stage's pip settings.
#
#   docker build -t lossd .                                        # CPU-only torch 2.13.0 (the default)
#   podman build --format docker -t lossd .                        # podman: only the docker format keeps HEALTHCHECK
#   docker build --build-arg TORCH_VARIANT=cuda -t lossd:cuda .    # CUDA torch 2.13.0 (run with --gpus all)
#   docker build --build-arg PYTHON_IMAGE=<internal python:3.11 image> \
#     --build-arg PIP_INDEX_URL=<internal PyPI mirror> --build-arg TORCH_INDEX_URL=<internal torch CPU index> .
#
# Dependencies: requirements.lock (`make lock`: requirements.txt resolved with every transitive dependency and
# the sha256 of each file), installed with --require-hashes under constraints.txt (torch==2.13.0), as `make` does.
# The lock is for CPython 3.11 on Linux x86_64: torch's only hash in it is PyTorch's CPU wheel for that platform.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cpu
# Where the CPU variant's torch comes from (searched besides the package index); empty: the index and find-links only.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The CUDA variant's extra index; empty: the package index, whose Linux x86_64 torch is the CUDA build.
ARG TORCH_CUDA_INDEX_URL=""
# pip's settings for this stage only (a mirror, a CA bundle, local wheels): build arguments, never in the image.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ARG PIP_DEFAULT_TIMEOUT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# the service's user (HOME /tmp: the root file system may be read-only, /tmp is a tmpfs there, as in
# docker-compose.yml and Kubernetes), which the runtime stage takes with /etc/passwd
RUN useradd --system --uid 10001 --gid 0 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin lossd
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements.lock constraints.txt ./
# cpu: the whole lock, hash-checked, torch included.
# cuda: the lock less torch, hash-checked; then torch==2.13.0's CUDA build and its NVIDIA packages, NOT
# hash-checked (the lock holds the CPU wheel's hash only; pin the CUDA files' hashes in your own lock to check them).
RUN if [ "$TORCH_VARIANT" = cpu ]; then \
      /opt/venv/bin/pip install --require-hashes ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -c constraints.txt -r requirements.lock; \
    elif [ "$TORCH_VARIANT" = cuda ]; then \
      sed '/^torch==/,/^[^ ]/{/^torch==/d;/^ /d;}' requirements.lock > no-torch.lock \
      && /opt/venv/bin/pip install --require-hashes -c constraints.txt -r no-torch.lock \
      && /opt/venv/bin/pip install ${TORCH_CUDA_INDEX_URL:+--extra-index-url "$TORCH_CUDA_INDEX_URL"} \
        -c constraints.txt torch==2.13.0; \
    else echo "TORCH_VARIANT must be cpu or cuda, not ${TORCH_VARIANT}" >&2; exit 1; fi \
    && echo "torch variant: ${TORCH_VARIANT}" > /opt/venv/lossd-variant

FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="lossd" \
      org.opencontainers.image.description="PyTorch loss functions over REST and gRPC (v1 JSON API and the Open Inference Protocol)" \
      io.lossd.torch-variant="${TORCH_VARIANT}"
# No RUN in this stage: the build's --volume mounts, made for every RUN step, leave no mount point here.
COPY --from=build /etc/passwd /etc/passwd
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOSSD_HOST=0.0.0.0 \
    LOSSD_PORT=8000 \
    LOSSD_GRPC_PORT=8001 \
    LOSSD_DEVICE=auto \
    MALLOC_ARENA_MAX=2
WORKDIR /app
# the service last: a change to it rebuilds this layer only
COPY service/ service/
USER 10001
# 8000: HTTP (REST, /healthz, /readyz, /metrics); 8001: gRPC (inference.GRPCInferenceService, grpc.health.v1)
EXPOSE 8000 8001
# asks the port the service listens on: LOSSD_PORT's value, also where the container's environment changes it
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LOSSD_PORT', '8000') + '/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
