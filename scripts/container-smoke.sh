#!/usr/bin/env bash
# Container smoke test: the real images, the real compose file, two workers, jobs from the host.
#
#   sudo scripts/container-smoke.sh
#
# 1. installs docker.io, docker-compose and debootstrap from Debian's packages when missing, and
#    starts dockerd when none answers (and stops it at the end);
# 2. ./build.sh: rory:worker + rory:nats, offline when no registry answers (the base image made by
#    debootstrap is reused when it exists);
# 3. ./deploy.sh 0 1 on a temporary RORY_BASE_PATH and free loopback ports; waits for both workers
#    to be healthy (their Docker HEALTHCHECK);
# 4. from the host, as the image's user (uid 10001, so the shared local store has one owner):
#    rory-client keygen, run skmeans iris, run knn iris, over the pool subject;
# 5. a long SKMeans job; once rory-worker-0 has served part of it, `docker stop rory-worker-0`
#    (SIGTERM: the worker drains) and the job completes on rory-worker-1 (pool subject, client retry);
# 6. tears the deployment down (containers, network, volumes, temporary files). Images stay as cache.
#
# Last line: SMOKE build_s=.. up_s=.. job_s=.. failover_s=.. healthy_workers=.. (job_s: the three
# client commands of step 4; failover_s: step 5).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly UID_RORY=10001
readonly FAILOVER_ITERATIONS="${SMOKE_FAILOVER_ITERATIONS:-600}"

log() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
    printf '[smoke] FAILED: %s\n' "$*" >&2
    exit 1
}

[[ "$(id -u)" -eq 0 ]] || die "run as root (it installs packages, starts dockerd and debootstraps a base image)"

WORK="$(mktemp -d /tmp/rory-smoke.XXXXXX)"
chmod 755 "${WORK}"
readonly WORK
DOCKERD_PID=""
COMPOSE=()
DEPLOYED=0

cleanup() {
    local rc=$?
    set +e
    if [[ "${DEPLOYED}" -eq 1 ]]; then
        log "tearing down"
        (cd "${ROOT}" && "${COMPOSE[@]}" --env-file config/.env.dev -f compose.yaml down -v --remove-orphans) \
            > "${WORK}/down.log" 2>&1 || tail -5 "${WORK}/down.log"
    fi
    if [[ -n "${DOCKERD_PID}" ]]; then
        log "stopping the dockerd this script started (pid ${DOCKERD_PID})"
        kill "${DOCKERD_PID}" 2> /dev/null
        wait "${DOCKERD_PID}" 2> /dev/null
    fi
    if [[ "${rc}" -ne 0 && -f "${WORK}/dockerd.log" ]]; then
        tail -20 "${WORK}/dockerd.log" >&2
    fi
    rm -rf "${WORK}"
    exit "${rc}"
}
trap cleanup EXIT

# ----------------------------------------------------------------------------------- 1. packages
missing=()
command -v dockerd > /dev/null || missing+=(docker.io)
command -v docker-compose > /dev/null || docker compose version > /dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap > /dev/null || missing+=(debootstrap)
command -v setpriv > /dev/null || missing+=(util-linux)
/usr/bin/python3 -c 'import ensurepip' 2> /dev/null || missing+=(python3-venv)
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > "${WORK}/apt.log" 2>&1 \
        || { tail -20 "${WORK}/apt.log"; die "apt-get install ${missing[*]}"; }
fi

if ! docker version > /dev/null 2>&1; then
    log "starting dockerd ${RORY_DOCKERD_ARGS:-}"
    # shellcheck disable=SC2086  # RORY_DOCKERD_ARGS is a list of flags
    dockerd ${RORY_DOCKERD_ARGS:-} > "${WORK}/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do
        docker version > /dev/null 2>&1 && break
        kill -0 "${DOCKERD_PID}" 2> /dev/null || die "dockerd exited (log above)"
        sleep 1
    done
    docker version > /dev/null 2>&1 || die "dockerd did not answer within 60 s"
fi
if docker compose version > /dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    COMPOSE=(docker-compose)
fi

# -------------------------------------------------------------------------------------- 2. build
# One snapshot of the packaged sources feeds both the image and the host's client, so they are the
# same code even when the checkout changes during the run. build.sh takes it as BASE_PATH (a checkout).
SRC="${WORK}/src"
mkdir -p "${SRC}/build"
(cd "${ROOT}" && cp -r Dockerfile .dockerignore build.sh pyproject.toml README.md core schemas worker dataowner "${SRC}/")
[[ -d "${ROOT}/build/wheelhouse" ]] && cp -r "${ROOT}/build/wheelhouse" "${SRC}/build/"
# The data owner's client runs on the host as the image's user: the local store keeps files 0600 and
# directories 0700 (worker/storage/local.py), so owner and workers must be one uid. Its venv is made
# from Debian's python3 (usable by that uid, unlike a Python under /root), the snapshot and the
# wheelhouse (plus scikit-learn for the datasets), while the images build.
make_client_venv() {
    /usr/bin/python3 -m venv "${WORK}/client" \
        && "${WORK}/client/bin/pip" install --quiet --disable-pip-version-check \
            --find-links "${ROOT}/build/wheelhouse" "${SRC}" scikit-learn
}
as_rory() { setpriv --reuid="${UID_RORY}" --regid="${UID_RORY}" --clear-groups env HOME="${WORK}/owner" "$@"; }
mkdir -p "${WORK}/owner"
chown "${UID_RORY}:${UID_RORY}" "${WORK}/owner"
CLIENT="${WORK}/client/bin/rory-client"
log "making a client venv from ${SRC} in the background"
make_client_venv > "${WORK}/pip.log" 2>&1 &
venv_pid=$!

t0=$SECONDS
log "./build.sh ${SRC}"
(cd "${ROOT}" && ./build.sh "${SRC}") > "${WORK}/build.log" 2>&1 || { tail -30 "${WORK}/build.log"; die "./build.sh"; }
# Keep the wheelhouse for the next run (build.sh reuses it while pyproject's dependencies match).
mkdir -p "${ROOT}/build" && rm -rf "${ROOT}/build/wheelhouse" && cp -r "${SRC}/build/wheelhouse" "${ROOT}/build/"
grep -E '^(No |Making|Base image|Wheelhouse|Building)' "${WORK}/build.log" || true
build_s=$((SECONDS - t0))
wait "${venv_pid}" || { grep -v 'is ignored' "${WORK}/pip.log" | tail -20; die "client venv"; }


# --------------------------------------------------------------------------------------- 3. deploy
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export RORY_BASE_PATH="${WORK}/rory"
RORY_NATS_PORT="$(free_port)"
RORY_NATS_MONITOR_PORT="$(free_port)"
export RORY_NATS_PORT RORY_NATS_MONITOR_PORT
readonly NATS="nats://127.0.0.1:${RORY_NATS_PORT}"

t0=$SECONDS
log "./deploy.sh 0 1 (base ${RORY_BASE_PATH}, NATS on 127.0.0.1:${RORY_NATS_PORT})"
DEPLOYED=1
(cd "${ROOT}" && ./deploy.sh 0 1) > "${WORK}/deploy.log" 2>&1 || { cat "${WORK}/deploy.log"; die "./deploy.sh 0 1"; }
health() { docker inspect --format '{{.State.Health.Status}}' "$1" 2> /dev/null || echo missing; }
for _ in $(seq 120); do
    [[ "$(health rory-worker-0)" == healthy && "$(health rory-worker-1)" == healthy ]] && break
    sleep 1
done
healthy_workers=0
for node in rory-worker-0 rory-worker-1; do
    [[ "$(health "${node}")" == healthy ]] && healthy_workers=$((healthy_workers + 1))
done
[[ "${healthy_workers}" -eq 2 ]] || {
    docker ps -a
    docker logs rory-worker-0 2>&1 | tail -20
    die "workers not healthy after 120 s: $(health rory-worker-0) / $(health rory-worker-1)"
}
up_s=$((SECONDS - t0))
log "both workers healthy after ${up_s} s"
docker ps --format '{{.Names}}\t{{.Status}}\t{{.Ports}}'
[[ "$(docker exec rory-worker-0 id -u)" == "${UID_RORY}" ]] || die "the worker does not run as uid ${UID_RORY}"

# ----------------------------------------------------------------------------------------- 4. jobs
client() {
    as_rory "${CLIENT}" "$@" --data-dir "${WORK}/owner" --storage-path "${RORY_BASE_PATH}/css"
}
t0=$SECONDS
log "rory-client keygen / run skmeans iris / run knn iris (pool subject, ${NATS})"
as_rory "${CLIENT}" keygen --data-dir "${WORK}/owner" --export "${RORY_BASE_PATH}/rory-worker-0/keys" > /dev/null
client run skmeans iris --nats "${NATS}" --pool | tee "${WORK}/skmeans.txt"
grep -q 'ARI vs the dataset' "${WORK}/skmeans.txt" || die "skmeans printed no result"
client run knn iris --nats "${NATS}" --pool | tee "${WORK}/knn.txt"
grep -q 'accuracy vs the dataset' "${WORK}/knn.txt" || die "knn printed no result"
job_s=$((SECONDS - t0))

# ------------------------------------------------------------------------------------- 5. failover
# Requests served so far by one node's clustering_skmeans endpoint (its NATS micro stats).
served() {
    "${CLIENT%/*}/rory-worker" stats --server "${NATS}" --json 2> /dev/null | python3 -c '
import json, sys
node = sys.argv[1]
print(sum(e["num_requests"] for s in json.load(sys.stdin) if s.get("metadata", {}).get("node_id") == node
          for e in s["endpoints"] if e["name"] == "clustering_skmeans"))' "$1"
}
t0=$SECONDS
before="$(served rory-worker-0)"
log "failover: skmeans iris, ${FAILOVER_ITERATIONS} rounds; rory-worker-0 is stopped once it has served 10 of them"
client run skmeans iris --nats "${NATS}" --pool --max-iterations "${FAILOVER_ITERATIONS}" --tolerance -1 \
    > "${WORK}/failover.txt" 2>&1 &
job_pid=$!
while kill -0 "${job_pid}" 2> /dev/null && [[ "$(served rory-worker-0)" -lt $((before + 10)) ]]; do
    sleep 0.5
done
mid_job=no
if kill -0 "${job_pid}" 2> /dev/null; then
    mid_job=yes
    log "docker stop rory-worker-0 (job running; $(($(served rory-worker-0) - before)) rounds served by it so far)"
    docker stop rory-worker-0 > /dev/null
    log "rory-worker-0: $(docker inspect --format '{{.State.Status}} (exit {{.State.ExitCode}})' rory-worker-0)"
fi
wait "${job_pid}" || { cat "${WORK}/failover.txt"; die "the job did not survive docker stop rory-worker-0"; }
cat "${WORK}/failover.txt"
grep -q "${FAILOVER_ITERATIONS} iteration(s)" "${WORK}/failover.txt" || die "failover job: wrong iteration count"
[[ "${mid_job}" == yes ]] || log "WARNING: the job ended before rory-worker-0 could be stopped (no failover shown)"
[[ "$(health rory-worker-1)" == healthy ]] || die "rory-worker-1 is not healthy after the failover"
failover_s=$((SECONDS - t0))

log "passed"
echo "SMOKE build_s=${build_s} up_s=${up_s} job_s=${job_s} failover_s=${failover_s} healthy_workers=${healthy_workers} stopped_mid_job=${mid_job}"
