"""Start-up of the ``d365`` command against a bare interpreter (issue 17: ``d365 --help`` within 6x ``python -c
pass``), and ``d365 run get_current_user``: as its ``--help`` (the runtime, manifest and contract loaded, no network)
and for real against the emulator (its own process; the token and one request included).

    .venv/bin/python benchmarks/startup.py [--runs 15] [--top 12] [--against REF]

Prints the median wall time of N runs of each command, the ratio to ``python -c pass``, and the slowest imports
(cumulative microseconds, from ``python -X importtime``). ``--against REF`` (a git ref, e.g. ``main``) also runs the
same commands with that commit's code (``git archive`` into a temporary folder, first on ``PYTHONPATH``; the same
interpreter and installed dependencies), interleaved with ours, and prints both.
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

from served import served

PYTHON = sys.executable
D365 = [PYTHON, "-m", "connector.cli"]
NEUTRAL = tempfile.gettempdir()
"""Where the commands run: ``python -m`` puts the working directory first on ``sys.path``, which in a checkout would
shadow the tree given by ``--against``."""


def median_s(commands: list[tuple[list[str], dict[str, str]]], runs: int) -> list[float]:
    """Median wall time of each command, the commands interleaved (A B A B) so a busy machine weighs on all alike."""
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for i, (command, env) in enumerate(commands):
            start = time.perf_counter()
            subprocess.run(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False, cwd=NEUTRAL
            )
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def exported(ref: str) -> Path:
    """The tree of ``ref`` in a temporary folder (``git archive``): its code, without touching any checkout."""
    root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True).stdout.strip())
    folder = Path(tempfile.mkdtemp(prefix="d365-startup-"))
    archive = subprocess.run(["git", "-C", str(root), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    # the editable install's import finder maps ``connector`` to this checkout ahead of PYTHONPATH: drop it, so the
    # exported tree's code is the code measured (sitecustomize runs after the .pth files that install the finder)
    (folder / "sitecustomize.py").write_text(
        "import sys\nsys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in repr(f)]\n"
    )
    return folder


def top_imports(command: list[str], n: int, env: dict[str, str]) -> list[tuple[int, str]]:
    """The ``n`` imports with the largest cumulative time (microseconds), outermost names only once."""
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=NEUTRAL,
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
    parser.add_argument("--against", default=None, help="a git ref whose code is measured too (e.g. main)")
    args = parser.parse_args()
    env = {**os.environ, "D365_POLICY": "local"}  # the person running the benchmark is the operator
    trees = {"this tree": env}
    if args.against:
        trees[args.against] = {**env, "PYTHONPATH": str(exported(args.against))}
    with served() as emu:
        env["D365_CONNECTION"] = str(emu.connection_file)
        for tree in trees.values():
            tree["D365_CONNECTION"] = str(emu.connection_file)
        commands = {
            "python -c pass": [PYTHON, "-c", "pass"],
            "d365 --help": [*D365, "--help"],
            "d365 run get_current_user --help": [*D365, "run", "get_current_user", "--help"],
            "d365 run get_current_user": [*D365, "run", "get_current_user"],
        }
        runs = [(name, tree, command, trees[tree]) for name, command in commands.items() for tree in trees]
        runs = runs[len(trees) - 1 :]  # python -c pass once
        seconds = median_s([(command, tree_env) for _, _, command, tree_env in runs], args.runs)
        base = seconds[0]
        for (name, tree, _, _), s in zip(runs, seconds, strict=True):
            label = f"{name} ({tree})" if len(trees) > 1 and name != "python -c pass" else name
            print(f"{label:<50} {s * 1000:7.1f} ms  {s / base:5.1f}x python -c pass (median of {args.runs})")
        for name in list(commands)[1:]:
            for tree, tree_env in trees.items():
                print(f"\nslowest imports of {name} ({tree}; cumulative ms, python -X importtime):")
                for micros, module in top_imports(commands[name], args.top, tree_env):
                    print(f"  {micros / 1000:7.1f}  {module}")


if __name__ == "__main__":
    main()
