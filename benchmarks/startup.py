"""Start-up of the ``d365`` command against a bare interpreter (issue 17: ``d365 --help`` within 6x ``python -c
pass``), and what ``d365 run get_current_user`` imports before it sends anything (measured as its ``--help``: the
runtime, manifest and contract loaded, no network).

    .venv/bin/python benchmarks/startup.py [--runs 15] [--top 12]

Prints the median wall time of N runs of each command, the ratio to ``python -c pass``, and the slowest imports
(cumulative microseconds, from ``python -X importtime``) of both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

PYTHON = sys.executable
D365 = [PYTHON, "-m", "connector.cli"]


def median_s(command: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def top_imports(command: list[str], n: int, env: dict[str, str]) -> list[tuple[int, str]]:
    """The ``n`` imports with the largest cumulative time (microseconds), outermost names only once."""
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True, env=env, check=False
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        rows.append((int(cumulative), name))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    env = dict(os.environ)
    commands = {
        "python -c pass": [PYTHON, "-c", "pass"],
        "d365 --help": [*D365, "--help"],
        "d365 run get_current_user --help": [*D365, "run", "get_current_user", "--help"],
    }
    base = None
    for name, command in commands.items():
        seconds = median_s(command, args.runs, env)
        base = base or seconds
        print(f"{name:<34} {seconds * 1000:7.1f} ms  {seconds / base:5.1f}x python -c pass (median of {args.runs})")
    for name in list(commands)[1:]:
        print(f"\nslowest imports of {name} (cumulative ms, python -X importtime):")
        for micros, module in top_imports(commands[name], args.top, env):
            print(f"  {micros / 1000:7.1f}  {module}")


if __name__ == "__main__":
    main()
