# DERIM container image. Stages:
#   builder   builds wheels of DERIM and of every dependency (no build tools reach the runtime)
#   core      python:3.11-slim, non-root user, no torch
#   ml        core plus torch (CPU build) for the twin's LSTM: `docker build --target ml .`
#   notebook  ml plus JupyterLab: the compose ml profile's jupyter service
#   runtime   = core, last so that a plain `docker build .` gives the image without torch
# The start-up script is deploy/entrypoint.py (validate settings, wait for InfluxDB and the
# broker when configured, then `derim serve`); docs/deployment.md. Needs BuildKit (RUN --mount).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS core
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DERIM_ENVIRONMENT=production \
    DERIM_HOST=0.0.0.0 \
    DERIM_PORT=8000 \
    DERIM_DATA_DIR=/var/lib/derim
# libgomp1: LightGBM's wheels link OpenMP from the system.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/derim --create-home derim
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels derim
COPY deploy/entrypoint.py /opt/derim/entrypoint.py
USER derim
WORKDIR /var/lib/derim
VOLUME ["/var/lib/derim"]
# 8000: REST API, /health and /metrics; 9000: OCPP central system (ws://host:9000/ocpp/<id>)
EXPOSE 8000 9000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/derim/entrypoint.py", "--health"]
ENTRYPOINT ["python", "/opt/derim/entrypoint.py"]
CMD []

FROM core AS ml
ARG TORCH_VERSION=2.13.0
# The CPU-only wheel index; the default index serves a much larger CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
USER root
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
USER derim

FROM ml AS notebook
USER root
RUN pip install jupyterlab
USER derim

FROM core AS runtime
