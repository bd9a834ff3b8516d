#!/usr/bin/env bash
# Start the Rory deployment with docker compose.
#
#   ./deploy.sh [BUILD_MODE] [DETACHED_MODE] [ENV_FILE_PATH] [COMPOSE_FILE]
#
#   BUILD_MODE     1: rebuild the images (up --build); 0: use existing images (default 0)
#   DETACHED_MODE  1: run in the background (up -d); 0: interactive (default 0)
#   ENV_FILE_PATH  compose variables file (default .env.dev; looked up as given, then in config/)
#   COMPOSE_FILE   compose manifest (default compose.yaml; the original default was docker-compose.yml)
#
# Examples:  ./deploy.sh      ./deploy.sh 1 1      ./deploy.sh 0 1 .env.prod
#            ./deploy.sh 0 1 .env.mictlanx.dev      # also start MictlanX (profile mictlanx)
set -euo pipefail

readonly BUILD_MODE="${1:-0}"
readonly DETACHED_MODE="${2:-0}"
readonly ENV_FILE_ARG="${3:-.env.dev}"
readonly COMPOSE_ARG="${4:-compose.yaml}"
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
if [[ "${COMPOSE_ARG}" == /* ]]; then
    COMPOSE_FILE="${COMPOSE_ARG}"
else
    COMPOSE_FILE="$(find_file "./${COMPOSE_ARG}" "${SCRIPT_DIR}/${COMPOSE_ARG}")" || {
        echo "deploy.sh: compose file '${COMPOSE_ARG}' not found" >&2
        exit 2
    }
fi
readonly ENV_FILE_PATH COMPOSE_FILE

args=(compose --env-file "${ENV_FILE_PATH}" -f "${COMPOSE_FILE}" up)
if [[ "${DETACHED_MODE}" -eq 1 ]]; then
    args+=(-d)
fi
if [[ "${BUILD_MODE}" -eq 1 ]]; then
    echo "Building Docker images..."
    args+=(--build)
fi
docker "${args[@]}"
