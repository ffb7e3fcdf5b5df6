"""Does gtasr-upscale's default hold when another process keeps a core busy? (docs/performance.md)

    python benchmarks/threads_busy.py samples --reps 3 > threads_busy.md

Runs `gtasr-upscale IMAGES OUT --overwrite -q` as a fresh process (start-up and model loading
included, as a user sees it) in each configuration below, on a quiet machine and with one extra
process spinning on a core (`python -c 'while True: pass'`). The configurations are interleaved
rep by rep so that other work on a shared machine falls on all of them alike; each cell is the
median wall time. The load average before and after is printed.

Configurations: the default and `--threads 1` of the code on PYTHONPATH (or installed), and,
with `--before DIR` (a checkout of an older version, e.g. `git archive <commit> | tar -x -C DIR`),
the same two with that code on PYTHONPATH -- to show what the current default replaced.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIN = [sys.executable, "-c", "while True: pass"]


def run_once(images: str, out: Path, extra: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(["gtasr-upscale", images, str(out), "--overwrite", "-q", *extra], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def configurations(before: str | None) -> list[tuple[str, list[str], dict]]:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    rows = [("default", [], base), ("--threads 1", ["--threads", "1"], base)]
    if before:  # the older code, as a user ran it (nothing set in the environment)
        old = dict(base, PYTHONPATH=str(Path(before).resolve()))
        rows += [("default, before", [], old), ("--threads 1, before", ["--threads", "1"], old)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--before", metavar="DIR", help="a checkout of an older version to compare with")
    args = parser.parse_args()
    configs = configurations(args.before)
    times: dict[tuple[str, str], list[float]] = {}
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} logical CPUs", file=sys.stderr)
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for machine in ("quiet", "one core busy"):
                spinner = subprocess.Popen(SPIN) if machine != "quiet" else None
                try:
                    if spinner:
                        time.sleep(1.0)
                    for name, extra, env in configs:
                        seconds = run_once(args.images, Path(tmp) / "out", extra, env)
                        times.setdefault((name, machine), []).append(seconds)
                        loads.append(os.getloadavg()[0])
                        print(f"rep {rep}: {machine:13s} {name:40s} {seconds:6.1f} s", file=sys.stderr)
                finally:
                    if spinner:
                        spinner.terminate()
                        spinner.wait()
    print(f"| command (`gtasr-upscale {args.images} out/ ...`) | quiet: median s | one core busy: median s |")
    print("|---|---:|---:|")
    for name, _, _ in configs:
        cells = [f"{statistics.median(times[(name, m)]):.1f} ({', '.join(f'{t:.1f}' for t in times[(name, m)])})"
                 for m in ("quiet", "one core busy")]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print(f"\nload average (1 min) during the runs: {min(loads):.2f}–{max(loads):.2f} "
          f"(the spinner adds 1.0 while it runs); {args.reps} reps, interleaved")


if __name__ == "__main__":
    main()
