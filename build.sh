#!/usr/bin/env bash
# Build the Rory worker image.
#
#   ./build.sh [BASE_PATH] [IMAGE]
#
#   BASE_PATH  where the Rory project lives (default /rory). As in the original layout, the worker
#              checkout is ${BASE_PATH}/worker/ (this repository) and the image builds from its root.
#              If BASE_PATH is itself a checkout (it holds the Dockerfile), it is used directly; with no
#              argument and no /rory/worker checkout, the checkout holding this script is used.
#   IMAGE      name:tag of the image (default rory:worker)
#
# Examples:  ./build.sh     ./build.sh /home/sreyes/rory shanelreyes/rory:worker-prod
set -euo pipefail

readonly BASE_PATH="${1:-/rory}"
readonly IMAGE="${2:-rory:worker}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR

if [[ -f "${BASE_PATH}/worker/Dockerfile" ]]; then
    CONTEXT="${BASE_PATH}/worker/"
elif [[ -f "${BASE_PATH}/Dockerfile" ]]; then
    CONTEXT="${BASE_PATH}/"
elif [[ $# -eq 0 ]]; then
    CONTEXT="${SCRIPT_DIR}/"
else
    echo "build.sh: no Dockerfile in ${BASE_PATH}/worker/ or ${BASE_PATH}/" >&2
    exit 2
fi
readonly CONTEXT

echo "Building ${IMAGE} from ${CONTEXT}"
docker build -t "${IMAGE}" "${CONTEXT}"
