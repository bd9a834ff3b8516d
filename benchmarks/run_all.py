"""Run every benchmark in turn and print their figures and ratios.

    python benchmarks/run_all.py            # default sizes, a few minutes on 2 cores
    python benchmarks/run_all.py --only runtime,storage
    python benchmarks/run_all.py --full     # the issues' full sizes (storage 512 MB, e2e 100k x 8,
                                            # growth up to n = 1e6)

Each benchmark is its own script (run it alone for its flags); this one only sequences them so a
single command reproduces the README's table. Timing targets live here, never in the tests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> (script, default arguments, --full arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "runtime": ("bench_runtime.py", [], []),
    "storage": ("bench_storage.py", [], ["--full"]),
    "core-liu": ("bench_core_liu.py", [], []),
    "core-ckks": ("bench_core_ckks.py", [], ["--n", "100000"]),
    # the secure round at small n, where the fixed cost per round shows (issue goal: <= 3 ms)
    "e2e-small": ("bench_e2e.py", ["--n", "1500", "--rounds", "30"], ["--n", "1500", "--rounds", "30"]),
    "e2e": ("bench_e2e.py", ["--n", "20000"], []),
    # SKMeans at n = 1e3 .. 1e5 (--full: .. 1e6, a 1 GB read cache), one table of growth per 10x n
    "growth": ("bench_growth.py", ["--quick"], []),
    "ledger": ("bench_ledger.py", [], []),
    "jetstream": ("bench_jetstream.py", [], []),
    "pplr": ("bench_pplr.py", [], ["--rows"]),
    # --full is the scaling run: 16 cores, one worker process per slot
    "pool": (
        "bench_pool.py",
        [],
        ["--workers", "1,4,8,12", "--slots", "1", "--commands", "256", "--n", "50000", "--rounds", "1"],
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--full", action="store_true", help="use the issues' full problem sizes")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failures = []
    for name in names:
        script, default_args, full_args = BENCHMARKS[name]
        extra = full_args if args.full else default_args
        print(f"\n=== {name}: python benchmarks/{script} {' '.join(extra)}".rstrip(), flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / script), *extra], cwd=HERE.parent)
        print(f"=== {name}: exit {code} in {time.perf_counter() - started:.1f} s", flush=True)
        if code:
            failures.append(name)
    if failures:
        print(f"\nfailed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
