# syntax=docker/dockerfile:1
# lossd: PyTorch losses over HTTP (port 8000) and gRPC (port 8001). Two stages: dependencies are built into
# a virtual environment, which the slim runtime stage copies without pip, caches or build tools.
#
#   docker build -t lossd .                                    # torch==2.13.0 as the index serves it
#   docker build --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> -t lossd:cpu .   # CPU-only wheels
#   docker build --build-arg TORCH_VARIANT=cuda -t lossd:cuda .   # CUDA wheels (run with --gpus all)
#
# The dependency pins are the ones `make` uses: requirements.txt under constraints.txt (torch==2.13.0).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.txt constraints.txt ./
# TORCH_INDEX_URL, when given, is searched besides the default index (PyTorch publishes CPU-only and
# per-CUDA wheel indexes); torch's version stays pinned by constraints.txt either way.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
       -c constraints.txt -r requirements.txt \
    && echo "torch variant: ${TORCH_VARIANT}" > /opt/venv/lossd-variant

FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="lossd" \
      org.opencontainers.image.description="PyTorch loss functions over REST and gRPC (v1 JSON API and the Open Inference Protocol)"
RUN useradd --system --uid 10001 --gid 0 --no-create-home --shell /usr/sbin/nologin lossd
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY service/ service/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOSSD_HOST=0.0.0.0 \
    LOSSD_PORT=8000 \
    LOSSD_GRPC_PORT=8001 \
    LOSSD_DEVICE=auto \
    MALLOC_ARENA_MAX=2
USER 10001
# 8000: HTTP (REST, /healthz, /readyz, /metrics); 8001: gRPC (inference.GRPCInferenceService, grpc.health.v1)
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
