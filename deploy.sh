#!/usr/bin/env bash
# Start the Rory deployment with docker compose.
#
#   ./deploy.sh [BUILD_MODE] [DETACHED_MODE] [ENV_FILE_PATH] [COMPOSE_FILE]
#
#   BUILD_MODE     1: rebuild the images (up --build); 0: use existing images (default 0)
#   DETACHED_MODE  1: run in the background (up -d); 0: interactive (default 0)
#   ENV_FILE_PATH  compose variables file (default .env.dev; looked up as given, then in config/)
#   COMPOSE_FILE   compose manifest(s), ':'-separated like Compose's COMPOSE_FILE (default: the env
#                  file's COMPOSE_FILE, else compose.yaml; the original default was docker-compose.yml)
#
# Before `up` it creates the host directories the compose files bind-mount under ${RORY_BASE_PATH}
# and, as root, gives them to the containers' user (RORY_UID:RORY_GID, default 10001, the image's
# user): Docker would otherwise create them owned by root, and the worker could not write there.
# It runs `docker compose` (v2) when present, else `docker-compose` (1.29); RORY_COMPOSE overrides.
#
# Examples:  ./deploy.sh      ./deploy.sh 1 1      ./deploy.sh 0 1 .env.prod
#            ./deploy.sh 0 1 .env.mictlanx.dev      # also start MictlanX (compose.mictlanx.yaml)
set -euo pipefail

readonly BUILD_MODE="${1:-0}"
readonly DETACHED_MODE="${2:-0}"
readonly ENV_FILE_ARG="${3:-.env.dev}"
COMPOSE_ARG="${4:-}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR

for flag in "${BUILD_MODE}" "${DETACHED_MODE}"; do
    if [[ "${flag}" != 0 && "${flag}" != 1 ]]; then
        echo "deploy.sh: BUILD_MODE and DETACHED_MODE must be 0 or 1 (got '${flag}')" >&2
        exit 2
    fi
done

# First existing file among the candidates, as given (relative to the current directory).
find_file() {
    local candidate
    for candidate in "$@"; do
        if [[ -f "${candidate}" ]]; then
            printf '%s' "${candidate}"
            return 0
        fi
    done
    return 1
}

if [[ "${ENV_FILE_ARG}" == /* ]]; then
    ENV_FILE_PATH="${ENV_FILE_ARG}"
else
    ENV_FILE_PATH="$(find_file "${ENV_FILE_ARG}" "config/${ENV_FILE_ARG}" \
        "${SCRIPT_DIR}/config/${ENV_FILE_ARG}")" || {
        echo "deploy.sh: env file '${ENV_FILE_ARG}' not found (also looked in config/)" >&2
        exit 2
    }
fi
# Value of KEY in the env file (last assignment wins, as in Compose), else the second argument.
env_value() {
    local value
    value="$(sed -n "s/^$1=//p" "${ENV_FILE_PATH}" | tail -n 1)"
    printf '%s' "${value:-$2}"
}

if [[ -z "${COMPOSE_ARG}" ]]; then
    COMPOSE_ARG="$(env_value COMPOSE_FILE compose.yaml)"
fi
COMPOSE_FILES=()
IFS=: read -r -a compose_names <<< "${COMPOSE_ARG}"
for name in "${compose_names[@]}"; do
    if [[ "${name}" == /* ]]; then
        COMPOSE_FILES+=("${name}")
    else
        found="$(find_file "./${name}" "${SCRIPT_DIR}/${name}")" || {
            echo "deploy.sh: compose file '${name}' not found" >&2
            exit 2
        }
        COMPOSE_FILES+=("${found}")
    fi
done
readonly ENV_FILE_PATH COMPOSE_FILES

# Host directories: every bind source written ${RORY_BASE_PATH:-...}/<dir> in the compose files.
base_path="${RORY_BASE_PATH:-$(env_value RORY_BASE_PATH /rory)}"
uid="${RORY_UID:-$(env_value RORY_UID 10001)}"
gid="${RORY_GID:-$(env_value RORY_GID 10001)}"
# shellcheck disable=SC2016  # the pattern matches a literal ${RORY_BASE_PATH:-...}
mapfile -t host_dirs < <(sed -n 's/.*\${RORY_BASE_PATH:-[^}]*}\/\([^: ]*\):.*/\1/p' "${COMPOSE_FILES[@]}" | sort -u)
for dir in "${host_dirs[@]}"; do
    path="${base_path}/${dir}"
    mkdir -p "${path}" 2> /dev/null || {
        echo "deploy.sh: cannot create ${path}; create it and chown ${uid}:${gid} it (as root)" >&2
        exit 2
    }
    if [[ "$(id -u)" -eq 0 ]]; then
        chown "${uid}:${gid}" "${path}"
    elif [[ "$(stat -c %u "${path}")" != "${uid}" ]]; then
        echo "deploy.sh: warning: ${path} is not owned by ${uid}; the workers may not write there" \
            "(sudo chown ${uid}:${gid} ${path})" >&2
    fi
done

if [[ -n "${RORY_COMPOSE:-}" ]]; then
    read -r -a compose_cmd <<< "${RORY_COMPOSE}"
elif docker compose version > /dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose > /dev/null; then
    compose_cmd=(docker-compose)
else
    echo "deploy.sh: neither 'docker compose' (v2) nor 'docker-compose' is installed" >&2
    exit 2
fi

args=(--env-file "${ENV_FILE_PATH}")
for file in "${COMPOSE_FILES[@]}"; do
    args+=(-f "${file}")
done
args+=(up)
if [[ "${DETACHED_MODE}" -eq 1 ]]; then
    args+=(-d)
fi
if [[ "${BUILD_MODE}" -eq 1 ]]; then
    echo "Building Docker images..."
    args+=(--build)
fi
"${compose_cmd[@]}" "${args[@]}"
