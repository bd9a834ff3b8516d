#!/usr/bin/env bash
# Build the Rory worker image and the NATS image of the compose deployment.
#
#   ./build.sh [BASE_PATH] [IMAGE]
#
#   BASE_PATH  where the Rory project lives (default /rory). As in the original layout, the worker
#              checkout is ${BASE_PATH}/worker/ (this repository) and the image builds from its root.
#              If BASE_PATH is itself a checkout (it holds the Dockerfile), it is used directly; with no
#              argument and no /rory/worker checkout, the checkout holding this script is used.
#   IMAGE      name:tag of the worker image (default rory:worker)
#
# Environment (all optional):
#   RORY_BUILD_MODE    auto (default): online when PYTHON_IMAGE is present locally or can be pulled,
#                      offline otherwise; online; offline (air-gapped: no registry, no package index)
#   RORY_NATS_IMAGE    name:tag of the NATS image (default rory:nats; "none" skips it)
#   RORY_PYTHON_IMAGE  base of an online build (default python:3.11-slim)
#   RORY_BASE_IMAGE    base of an offline build (default rory-base:bookworm); made with debootstrap
#                      from Debian's packages when missing (needs root and the debootstrap package)
#   RORY_DEBIAN_MIRROR Debian mirror for debootstrap (default: debootstrap's own default)
#   RORY_WHEEL_PYTHON  Python 3.11 that runs `pip wheel` for the offline wheelhouse (default python3)
#
# Offline builds put the wheels in <context>/build/wheelhouse/ (pip wheel, with pip's own configured
# sources); the image then installs with --no-index from it. A wheelhouse copied in from elsewhere is
# used as is when its .requirements stamp matches pyproject.toml (that is how air-gapped hosts build).
#
# Examples:  ./build.sh     ./build.sh /home/sreyes/rory shanelreyes/rory:worker-prod
#            RORY_BUILD_MODE=offline ./build.sh
set -euo pipefail

readonly BASE_PATH="${1:-/rory}"
readonly IMAGE="${2:-rory:worker}"
readonly MODE="${RORY_BUILD_MODE:-auto}"
readonly NATS_IMAGE="${RORY_NATS_IMAGE:-rory:nats}"
readonly PYTHON_IMAGE="${RORY_PYTHON_IMAGE:-python:3.11-slim}"
readonly BASE_IMAGE="${RORY_BASE_IMAGE:-rory-base:bookworm}"
readonly WHEEL_PYTHON="${RORY_WHEEL_PYTHON:-python3}"
readonly DEBIAN_SUITE=bookworm # its python3 is 3.11, the version of python:3.11-slim and pyproject
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR

die() {
    echo "build.sh: $*" >&2
    exit 2
}

case "${MODE}" in
    auto | online | offline) ;;
    *) die "RORY_BUILD_MODE must be auto, online or offline (got '${MODE}')" ;;
esac

if [[ -f "${BASE_PATH}/worker/Dockerfile" ]]; then
    CONTEXT="${BASE_PATH}/worker/"
elif [[ -f "${BASE_PATH}/Dockerfile" ]]; then
    CONTEXT="${BASE_PATH}/"
elif [[ $# -eq 0 ]]; then
    CONTEXT="${SCRIPT_DIR}/"
else
    die "no Dockerfile in ${BASE_PATH}/worker/ or ${BASE_PATH}/"
fi
readonly CONTEXT

if ! docker version > /dev/null 2>&1; then
    die "no Docker engine answers (docker version failed); start dockerd, or run scripts/container-smoke.sh as root, which starts one"
fi

# ---------------------------------------------------------------------------------- offline pieces
# A minimal Debian with python3 + venv, imported as an image: the same packages python:3.11-slim is
# built from, but made from the Debian archive alone (no registry).
make_base_image() {
    if docker image inspect "${BASE_IMAGE}" > /dev/null 2>&1; then
        echo "Base image ${BASE_IMAGE} exists (docker rmi it to rebuild)"
        return 0
    fi
    [[ "$(id -u)" -eq 0 ]] || die "making ${BASE_IMAGE} needs root (debootstrap); run as root or load a base image and set RORY_BASE_IMAGE"
    command -v debootstrap > /dev/null || die "making ${BASE_IMAGE} needs debootstrap (apt-get install debootstrap)"
    local rootfs
    rootfs="$(mktemp -d /tmp/rory-base.XXXXXX)"
    echo "Making ${BASE_IMAGE} with debootstrap (${DEBIAN_SUITE}, minbase + python3)..."
    local mirror=()
    [[ -n "${RORY_DEBIAN_MIRROR:-}" ]] && mirror=("${RORY_DEBIAN_MIRROR}")
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "${DEBIAN_SUITE}" "${rootfs}" "${mirror[@]}" > "${rootfs}.log" 2>&1 || {
        tail -20 "${rootfs}.log" >&2
        die "debootstrap failed (log above)"
    }
    rm -f "${rootfs}.log"
    # Package caches and documentation are dead weight in an image.
    rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/* \
        "${rootfs}"/usr/share/doc/* "${rootfs}"/usr/share/man/* "${rootfs}"/usr/share/info/* \
        "${rootfs}"/usr/share/locale/*
    tar -C "${rootfs}" -c . | docker import \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' \
        -m "debootstrap --variant=minbase ${DEBIAN_SUITE} + python3" - "${BASE_IMAGE}" > /dev/null
    rm -rf "${rootfs}"
}

# Wheels of [project].dependencies plus the build backend (setuptools, wheel) for `pip install .`.
make_wheelhouse() {
    local wheelhouse="${CONTEXT}build/wheelhouse"
    local requirements
    requirements="$(cd "${CONTEXT}" && "${WHEEL_PYTHON}" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))")" \
        || die "${WHEEL_PYTHON} cannot read pyproject.toml (it needs Python 3.11+)"
    requirements+=$'\nsetuptools>=68\nwheel'
    if [[ -f "${wheelhouse}/.requirements" && "$(cat "${wheelhouse}/.requirements")" == "${requirements}" ]]; then
        echo "Wheelhouse ${wheelhouse} is up to date"
        return 0
    fi
    "${WHEEL_PYTHON}" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "${WHEEL_PYTHON} is not Python 3.11, the image's Python: set RORY_WHEEL_PYTHON"
    echo "Building the wheelhouse in ${wheelhouse}..."
    mkdir -p "${wheelhouse}"
    printf '%s\n' "${requirements}" > "${wheelhouse}/requirements.txt"
    "${WHEEL_PYTHON}" -m pip wheel --quiet --disable-pip-version-check \
        --wheel-dir "${wheelhouse}" -r "${wheelhouse}/requirements.txt" \
        || die "pip wheel failed: the host needs the wheels (or a package index) once"
    printf '%s' "${requirements}" > "${wheelhouse}/.requirements"
}

# -------------------------------------------------------------------------------------- the build
resolved="${MODE}"
if [[ "${resolved}" == auto ]]; then
    if docker image inspect "${PYTHON_IMAGE}" > /dev/null 2>&1 \
        || docker pull "${PYTHON_IMAGE}" > /dev/null 2>&1; then
        resolved=online
    else
        echo "No ${PYTHON_IMAGE} locally and none can be pulled: building offline"
        resolved=offline
    fi
fi

build_args=()
if [[ "${resolved}" == offline ]]; then
    make_base_image
    make_wheelhouse
    build_args=(--build-arg "PYTHON_IMAGE=${BASE_IMAGE}" --build-arg WHEELHOUSE_ONLY=1)
fi

echo "Building ${IMAGE} from ${CONTEXT} (${resolved})"
docker build "${build_args[@]}" -t "${IMAGE}" "${CONTEXT}"
if [[ "${NATS_IMAGE}" != none ]]; then
    echo "Building ${NATS_IMAGE} (target nats) from ${CONTEXT} (${resolved})"
    docker build "${build_args[@]}" --target nats -t "${NATS_IMAGE}" "${CONTEXT}"
fi
