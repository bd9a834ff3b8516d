"""Chaos suite: a Rory cluster on separate hosts (Linux network namespaces), faults while jobs run.

    sudo python scripts/chaos.py                       # everything: ~4 min on 2 cores
    sudo python scripts/chaos.py --modes jetstream --faults worker-kill --jobs 40

Three nats-servers (one JetStream cluster, R3 streams), two real workers (``python -m worker run``,
RORY_JOBS_MODE=jetstream, then core) and a Manager each run in a namespace of their own, joined by a
bridge in another namespace. For each fault (JetStream meta leader killed, a worker SIGKILLed, a
worker's link cut, a storage outage) it prints jobs submitted / completed / failed / lost / run
twice and the time to recover, then a table. Exit status 1 when JetStream mode lost a job or ran
one twice; 2 when this machine cannot create network namespaces. Root only; everything it creates
(namespaces, processes, a temp directory) is removed at the end, also on Ctrl-C or SIGTERM.
See docs/reliability.md, "Chaos suite", and scripts/chaos/ for the parts.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/chaos.py`: make `scripts.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.chaos.net import ensure_iproute2, netns_permitted
from scripts.chaos.suite import FAULTS, MODES, Config, main


def _choices(value: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    chosen = tuple(part for part in value.split(",") if part)
    unknown = [part for part in chosen if part not in allowed]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}")
    return chosen


def parse(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=120, help="jobs per fault (default 120)")
    parser.add_argument("--job-seconds", type=float, default=0.25, help="length of one job")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds each fault lasts")
    parser.add_argument("--ack-wait", type=float, default=20.0, help="JETSTREAM_ACK_WAIT of the workers")
    parser.add_argument("--modes", type=lambda v: _choices(v, MODES), default=MODES)
    parser.add_argument("--faults", type=lambda v: _choices(v, FAULTS), default=FAULTS)
    parser.add_argument("--json", dest="json_path", help="also write the rows here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    return Config(jobs=args.jobs, job_seconds=args.job_seconds, outage=args.outage, ack_wait=args.ack_wait,
                  modes=args.modes, faults=args.faults, keep=args.keep, json_path=args.json_path)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the suite's finally blocks: processes, namespaces, files


if __name__ == "__main__":
    config = parse(sys.argv[1:])
    if sys.platform == "linux" and __import__("os").geteuid() == 0:
        ensure_iproute2()
    why = netns_permitted()
    if why:
        print(f"chaos: cannot run: {why}", file=sys.stderr)
        sys.exit(2)
    for signum in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a shell's `cmd &` starts it ignored
        signal.signal(signum, _terminate)
    try:
        sys.exit(main(config))
    except KeyboardInterrupt:
        print("chaos: interrupted; everything it started was stopped and removed", file=sys.stderr)
        sys.exit(130)
