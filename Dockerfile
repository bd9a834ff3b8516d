# syntax=docker/dockerfile:1
# Rory worker image. Build context: the repository root (./build.sh does this; see docs/deployment.md).
#   docker build -t rory:worker .
#   docker run --rm -e NODE_ID=rory-worker-0 -e NATS_URLS=nats://nats:4222 rory:worker
ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=1800 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes, not on every
# source edit. The list is read from [project].dependencies, so pyproject stays the only source of truth.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the project itself (no dependency resolution: they are already installed above).
COPY README.md* ./
COPY core ./core
COPY schemas ./schemas
COPY worker ./worker
COPY dataowner ./dataowner
RUN pip install --no-deps . && rory-worker --help > /dev/null

# -------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG RORY_UID=10001
ARG RORY_GID=10001
LABEL org.opencontainers.image.title="rory-worker" \
      org.opencontainers.image.description="Privacy-preserving data-mining worker on the NATS message bus"

# Defaults for the container; every name below is a worker setting (config/worker.env lists them all).
# NATS_URLS points at the compose service "nats"; override it for any other deployment.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NODE_ID=rory-worker-0 \
    NATS_URLS=nats://nats:4222 \
    SOURCE_PATH=/rory/source \
    SINK_PATH=/rory/sink \
    LOG_PATH=/rory/log \
    KEYS_PATH=/rory/keys \
    ENV_FILE_PATH=/rory/envs/.worker.env

RUN groupadd --system --gid "${RORY_GID}" rory \
    && useradd --system --uid "${RORY_UID}" --gid rory --home-dir /rory --shell /usr/sbin/nologin rory \
    && mkdir -p /rory/source /rory/sink /rory/log /rory/keys /rory/envs \
    && chown -R rory:rory /rory

COPY --from=builder /opt/venv /opt/venv

USER rory
WORKDIR /rory
VOLUME ["/rory/source", "/rory/sink", "/rory/log", "/rory/keys"]

# Healthy while the worker answers its health subject over NATS with status ready or busy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD rory-worker health "$NODE_ID" || exit 1

# SIGTERM drains: in-flight commands get SHUTDOWN_GRACE_PERIOD seconds (compose allows a bit more).
STOPSIGNAL SIGTERM
ENTRYPOINT ["rory-worker"]
CMD ["run"]
