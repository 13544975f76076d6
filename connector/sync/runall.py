"""Many syncs: every definition of a folder run in dependency order, cycles in two passes, on one connection.

Order: a definition that looks rows up in a table (``lookup.table``) runs after every definition writing that table
(accounts before the contacts that look them up). Definitions that depend on each other (``account.primarycontactid``
-> contact, ``contact.parentcustomerid`` -> account, or a table looking itself up) form a cycle, written in two
passes: first each member's rows without the lookups inside the cycle, as a sync of its own (``<name>.rows``, mode
``insert``: it creates the missing rows and leaves existing ones alone, so later rounds send nothing there), then each
member whole, lookups included. Otherwise definitions run one after another, by file name where the order is free.

One connection for all, so one governor: every definition's requests share its limits, its throttle waits and its
view of the service protection windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from connector.errors import ConnectorError, InputError, InputProblem
from connector.policy import OperatorPolicy
from connector.sync.definition import SyncDefinition, load_definition
from connector.sync.engine import EXIT_DONE
from connector.sync.lease import Lease
from connector.sync.runner import run_definition

if TYPE_CHECKING:
    from connector.clock import Clock
    from connector.connection import Connection

__all__ = ["SUFFIXES", "Step", "load_folder", "plan_steps", "run_steps", "schedule"]

SUFFIXES = (".sync.yaml", ".sync.yml", ".sync.json")


@dataclass(frozen=True)
class Step:
    """One run of a round: ``phase`` ``rows`` is a cycle's first pass (``definition`` without its cyclic lookups)."""

    file: Path
    definition: SyncDefinition
    phase: Literal["rows", "all"] = "all"


def load_folder(folder: Path, policy: OperatorPolicy) -> list[tuple[Path, SyncDefinition]]:
    """The folder's definitions (``*.sync.yaml``, ``*.sync.yml``, ``*.sync.json``), each checked whole; all problems
    of all files are reported together, before anything runs."""
    if not folder.is_dir():
        raise InputError([InputProblem("DIR", f"{folder} is not a folder of sync definitions")])
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
    if not files:
        raise InputError([InputProblem("DIR", f"{folder} holds no *.sync.yaml, *.sync.yml or *.sync.json file")])
    found: list[tuple[Path, SyncDefinition]] = []
    problems: list[InputProblem] = []
    names: dict[str, Path] = {}
    for file in files:
        try:
            definition = load_definition(file, policy=policy)
        except InputError as exc:
            problems += [InputProblem(f"{file.name}: {p.path}", p.message) for p in exc.problems]
            continue
        if definition.source.stdin:
            problems.append(InputProblem(f"{file.name}: $.source.stdin", "run-all has no standard input to give"))
        if definition.name in names:
            problems.append(
                InputProblem(f"{file.name}: $.name", f"{definition.name!r} is also {names[definition.name].name}'s")
            )
        names[definition.name] = file
        found.append((file, definition))
    if problems:
        raise InputError(problems)
    return found


def _components(graph: Sequence[set[int]]) -> Iterator[list[int]]:
    """Strongly connected components (Tarjan), each emitted after every component it points to: dependencies first."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []

    def visit(node: int) -> Iterator[list[int]]:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                yield from visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[int] = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            yield sorted(component)

    for node in range(len(graph)):
        if node not in index:
            yield from visit(node)


def plan_steps(found: Sequence[tuple[Path, SyncDefinition]], table_of: Callable[[str], str]) -> list[Step]:
    """The round's runs in order; ``table_of`` gives a table's logical name (targets may be entity set names)."""
    targets = [table_of(d.target) for _, d in found]
    graph = [
        {j for j, target in enumerate(targets) for e in d.mapping if e.lookup and table_of(e.lookup.table) == target}
        for _, d in found
    ]
    steps: list[Step] = []
    for component in _components(graph):
        cyclic = len(component) > 1 or component[0] in graph[component[0]]
        if not cyclic:
            steps.append(Step(*found[component[0]]))
            continue
        inside = {targets[i] for i in component}
        for i in component:
            file, definition = found[i]
            if definition.mode != "update":
                kept = [e for e in definition.mapping if not (e.lookup and table_of(e.lookup.table) in inside)]
                first = {"name": f"{definition.name}.rows", "mode": "insert", "mapping": kept}
                steps.append(Step(file, definition.model_copy(update=first), "rows"))
        steps += [Step(*found[i]) for i in component]
    return steps


def run_steps(
    steps: Sequence[Step],
    connection: Connection,
    *,
    policy: OperatorPolicy,
    full: bool = False,
    before_each: Callable[[], None] | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Run ``steps`` in order on ``connection``; the worst exit code. A definition refused (its mapping against the
    metadata) is reported and the round goes on: the definitions after it report what they lack themselves."""
    code = EXIT_DONE
    for step in steps:
        if before_each is not None:
            before_each()
        line: dict[str, Any] = {"definition": step.file.name, "sync": step.definition.name, "phase": step.phase}
        try:
            result = run_definition(step.definition, connection, policy=policy, base_dir=step.file.parent, full=full)
        except ConnectorError as exc:
            line |= {"error": exc.to_dict(), "exit_code": exc.exit_code}
            code = max(code, exc.exit_code)
        else:
            line |= result.to_dict(step.definition.batch_size)
            code = max(code, result.exit_code)
        if report is not None:
            report(line)
    return code


def schedule(
    one_round: Callable[[], int],
    lease: Lease,
    *,
    clock: Clock,
    every_s: float | None = None,
    rounds: int | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Run ``one_round`` under the lease: once, or every ``every_s`` seconds from the start of the previous round
    (a round longer than that is followed at once) until ``stop()`` or ``rounds`` rounds; the worst exit code.
    Refused with :class:`~connector.sync.lease.ScheduleLocked` while another scheduler holds the lease; the lease is
    renewed while waiting and released at the end."""
    lease.renew()
    code, done = EXIT_DONE, 0
    try:
        while True:
            started = clock.monotonic()
            code = max(code, one_round())
            done += 1
            if every_s is None or stop() or (rounds is not None and done >= rounds):
                return code
            renewed = clock.monotonic()
            while not stop() and (left := started + every_s - clock.monotonic()) > 0:
                clock.sleep(min(left, 1.0))  # short waits: a SIGTERM is seen within a second
                if clock.monotonic() - renewed >= lease.ttl_s / 3:
                    lease.renew()
                    renewed = clock.monotonic()
            if stop():
                return code
            lease.renew()
    finally:
        lease.release()
