"""This connector side by side with Microsoft's Python SDK (``PowerPlatform-Dataverse-Client``) and ``dataverse-api``
on the emulator, written to ``benchmarks/results.md``. Every library runs in its own process (ours in ``.venv``, the
peers in ``.venv-peers``, created by this script from ``benchmarks/peers/requirements.lock``) and reports its own
wall time, CPU time and peak memory; rows landed are counted on the emulator afterwards.

1. 20,000 upserts by alternate key (new keys), model off, latency 0 and 20 ms: ``write_entities``; the SDK's
   ``records.upsert`` with the whole list in one call and in calls of 1,000 (Microsoft's 100-1,000 guidance);
   ``dataverse-api``'s ``upsert(mode="batch")`` ($batch of 500); a per-record loop of ``upsert_entity`` on a
   twentieth of the rows (its rate is what counts). 1b: 20,000 creates, latency 20 ms: ``write_entities`` create
   against the SDK's ``records.create`` with a list (one ``CreateMultiple``), whole and in calls of 1,000.
2. The same with the calibrated throttle model on (``dataverse_emulator/execution.py``; Dataverse's rates on a 3 s
   window, like ``bulk_write.py``), latency 20 ms: rows landed, rows lost, 429s answered, time. The slow paths
   (``dataverse-api``, the loop) run on fewer rows.
3. Fetch-all of 100,000 seeded rows (pages of 5,000): rows/s and peak resident memory of each process.
4. 1,000 mixed batch operations (creates, updates by id, upserts by key) of which 5 update rows that do not exist:
   rows landed, and whether the failures named are exactly those 5 inputs.

One fresh emulator (its own process, HTTPS: the SDK refuses http) per scenario; the runs of a scenario are interleaved
(A B C A B C) and the table gives medians over ``--reps`` and ratios to ours. Never part of the test suite.

    .venv/bin/python benchmarks/compare.py [--quick] [--reps 2] [--out benchmarks/results.md]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from served import Served, served

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_VENV = ROOT / ".venv-peers"
PEERS_LOCK = HERE / "peers" / "requirements.lock"
MODEL = {"throttle": "dataverse", "window_s": 3.0, "max_requests": 60, "max_exec_s": 12.0, "time_scale": 1.0}
KEY = {
    "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
    "SchemaName": "bench_accountnumber",
    "DisplayName": {"LocalizedLabels": [{"Label": "Account number", "LanguageCode": 1033}]},
    "KeyAttributes": ["accountnumber"],
}


def ensure_peers() -> Path:
    """``.venv-peers`` with the pinned peers, rebuilt when the lock changes; returns its python."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".lock-sha256"
    digest = hashlib.sha256(PEERS_LOCK.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    print(f"creating {PEERS_VENV.name} from {PEERS_LOCK.relative_to(ROOT)}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(PEERS_LOCK)], check=True)
    stamp.write_text(digest)
    return python


@dataclass
class Contender:
    """One library's way to do a scenario: the driver command and how many rows it gets."""

    name: str
    command: Callable[[Served, str, int], list[str]]
    rows: Callable[[int], int] = lambda n: n


@dataclass
class Outcome:
    name: str
    rows: int
    seconds: float
    cpu_s: float
    peak_rss_mib: float
    landed: int | None = None
    throttled: int = 0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return (self.landed if self.landed is not None else self.rows) / self.seconds


class Bench:
    def __init__(self, peers_python: Path) -> None:
        self.peers = str(peers_python)
        self.ours = sys.executable

    def ours_cmd(self, run: str) -> Callable[[Served, str, int], list[str]]:
        return lambda emu, prefix, n: [self.ours, str(HERE / "ours.py"), run, *common(emu, prefix, n)]

    def peer_cmd(self, run: str, *extra: str) -> Callable[[Served, str, int], list[str]]:
        return lambda emu, prefix, n: [
            self.peers,
            str(HERE / "peers" / "driver.py"),
            run,
            *common(emu, prefix, n),
            *extra,
        ]


def common(emu: Served, prefix: str, n: int) -> list[str]:
    return ["--connection", str(emu.connection_file), "--prefix", prefix, "--n", str(n)]


def execute(emu: Served, argv: list[str]) -> dict[str, Any]:
    env = {**os.environ, "REQUESTS_CA_BUNDLE": emu.ca_file or "", "D365_POLICY": "local"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}", "seconds": float("nan")}
    return dict(json.loads(lines[-1]))


def api(emu: Served) -> httpx.Client:
    cfg = emu.config
    form = {"grant_type": "client_credentials", "client_id": cfg["client_id"], "client_secret": cfg["client_secret"]}
    form["scope"] = f"{emu.base_url}/.default"
    token = httpx.post(cfg["token_url"], data=form, verify=emu.ca_file or True).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Prefer": "odata.maxpagesize=5000"}
    return httpx.Client(base_url=emu.api_url + "/", headers=headers, verify=emu.ca_file or True, timeout=300)


def count_rows(emu: Served, flt: str) -> int:
    """Rows matching ``flt`` (pages of 5,000), read after a run: what landed whatever the library reported. Done
    after a full window, with the model on, so the count itself is not throttled."""
    total = 0
    with api(emu) as c:
        url: str | None = f"accounts?$select=accountid&$filter={flt}"
        while url:
            r = c.get(url)
            r.raise_for_status()
            body = r.json()
            total += len(body["value"])
            url = body.get("@odata.nextLink")
    return total


def prepare(emu: Served) -> None:
    with api(emu) as c:
        c.post("EntityDefinitions(LogicalName='account')/Keys", json=KEY).raise_for_status()


def interleaved(
    emu: Served, contenders: list[Contender], n: int, reps: int, tag: str, pause: float = 0.0
) -> dict[str, list[Outcome]]:
    """Each contender ``reps`` times, interleaved (A B C A B C), each on its own new keys."""
    out: dict[str, list[Outcome]] = {c.name: [] for c in contenders}
    for rep in range(reps):
        for i, c in enumerate(contenders):
            prefix = f"{tag}{rep}{i}"
            rows = c.rows(n)
            time.sleep(pause)
            emu.admin.clear_requests()
            result = execute(emu, c.command(emu, prefix, rows))
            throttled = sum(1 for r in emu.admin.requests() if r.get("status") == 429)
            time.sleep(pause)
            landed = count_rows(emu, f"startswith(accountnumber,'{prefix}-')")
            outcome = Outcome(
                c.name, rows, float(result.get("seconds", float("nan"))), float(result.get("cpu_s", 0.0)),
                float(result.get("peak_rss_mib", 0.0)), landed, throttled, result.get("error"), result,
            )  # fmt: skip
            out[c.name].append(outcome)
            print(f"  {c.name:<40} {rows:>7,} rows {outcome.seconds:7.2f} s {outcome.rate:9,.0f} rows/s "
                  f"landed {landed:,} 429s {throttled}{' ' + outcome.error if outcome.error else ''}",
                  flush=True)  # fmt: skip
    return out


def median(outcomes: list[Outcome], attr: str) -> float:
    return float(statistics.median(getattr(o, attr) for o in outcomes))


def write_table(results: dict[str, list[Outcome]], ours: str, lines: list[str], model: bool) -> None:
    base = median(results[ours], "rate")
    head = "| library and way | rows | median s | rows/s | vs ours | client CPU s / 10k rows |"
    lines += [head + (" landed | lost | 429s |" if model else ""), "|" + "---|" * (6 + 3 * model)]
    for name, outs in results.items():
        rate, rows = median(outs, "rate"), outs[0].rows
        cpu = median(outs, "cpu_s") / rows * 10_000
        row = f"| {name} | {rows:,} | {median(outs, 'seconds'):.2f} | {rate:,.0f} | {rate / base:.2f}x | {cpu:.2f} |"
        if model:
            landed = min(o.landed or 0 for o in outs)
            lost = max(rows - (o.landed or 0) for o in outs)
            row += f" {landed:,} | {lost:,} | {max(o.throttled for o in outs)} |"
        errors = {o.error for o in outs if o.error}
        lines.append(row + (f" stopped: {'; '.join(sorted(errors))}" if errors else ""))


def mixed_plan(emu: Served, prefix: str, n_ops: int, bad: set[int]) -> Path:
    """Creates, updates by id of seeded rows, upserts by key, in turn; the ``bad`` indexes update rows that do not
    exist (a 404 only the server can tell)."""
    seeded = emu.admin.seed(
        "account", [{"name": f"seed {i}", "accountnumber": f"SEED-{prefix}-{i}"} for i in range(n_ops)]
    )
    plan: list[dict[str, Any]] = []
    for i in range(n_ops):
        fields = {"name": f"{prefix} {i}"}
        if i in bad:
            plan.append({"action": "update", "id": str(uuid.UUID(int=i + 1)), "fields": fields})
        elif i % 3 == 0:
            plan.append({"action": "create", "fields": {**fields, "accountnumber": f"{prefix}-C{i}"}})
        elif i % 3 == 1:
            plan.append({"action": "update", "id": seeded[i], "fields": fields})
        else:
            plan.append({"action": "upsert", "key": {"accountnumber": f"{prefix}-K{i}"}, "fields": fields})
    path = Path(tempfile.mkdtemp(prefix="d365-mixed-")) / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition: a check that all runs")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument("--scenarios", default="1b234", help="which to run: 1, b (1b), 2, 3, 4")
    args = parser.parse_args()
    n, fetch_n, mixed_n = (2000, 10_000, 200) if args.quick else (20_000, 100_000, 1000)
    reps = args.reps or (1 if args.quick else 2)
    bench = Bench(ensure_peers())
    upserts = [
        Contender("ours: write_entities", bench.ours_cmd("upsert")),
        Contender("Microsoft SDK: records.upsert, whole list", bench.peer_cmd("sdk-upsert")),
        Contender("Microsoft SDK: records.upsert, calls of 1,000", bench.peer_cmd("sdk-upsert", "--chunk", "1000")),
        Contender("dataverse-api: upsert(mode='batch')", bench.peer_cmd("dvapi-upsert")),
        Contender("ours: upsert_entity loop (1/20 of the rows)", bench.ours_cmd("loop"), lambda k: max(50, k // 20)),
    ]
    command = " ".join([".venv/bin/python", "benchmarks/compare.py", *sys.argv[1:]])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    pins = [line for line in PEERS_LOCK.read_text().splitlines() if line.startswith(("PowerPlatform", "dataverse-api"))]
    lines = [
        "# Side by side: this connector, Microsoft's SDK, dataverse-api",
        "",
        f"`{command}` on {platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}), {when}. "
        f"Peers: {', '.join(pins)}. Medians of {reps} interleaved repetition(s); each library in its own process "
        "against the emulator in another (HTTPS); rows landed counted on the emulator afterwards.",
        "",
    ]
    load_at_start = os.getloadavg()[0]
    if "1" in args.scenarios:
        for latency in (0, 20):
            print(f"scenario 1: {n:,} upserts, model off, latency {latency} ms", flush=True)
            with served(tls=True, latency_ms=latency) as emu:
                prepare(emu)
                res = interleaved(emu, upserts, n, reps, f"U{latency}-")
            lines += [f"## 1. {n:,} upserts by alternate key, model off, latency {latency} ms", ""]
            write_table(res, upserts[0].name, lines, model=False)
            lines.append("")
    if "b" in args.scenarios:
        creates = [
            Contender("ours: write_entities create", bench.ours_cmd("create")),
            Contender("Microsoft SDK: records.create, whole list", bench.peer_cmd("sdk-create")),
            Contender("Microsoft SDK: records.create, calls of 1,000", bench.peer_cmd("sdk-create", "--chunk", "1000")),
        ]
        print(f"scenario 1b: {n:,} creates, model off, latency 20 ms", flush=True)
        with served(tls=True, latency_ms=20) as emu:
            prepare(emu)
            res = interleaved(emu, creates, n, reps, "K-")
        lines += [f"## 1b. {n:,} creates (new rows), model off, latency 20 ms", ""]
        write_table(res, creates[0].name, lines, model=False)
        lines.append("")
    if "2" in args.scenarios:
        print(f"scenario 2: {n:,} upserts, calibrated model on, latency 20 ms", flush=True)
        slow = [
            *upserts[:3],
            Contender(upserts[3].name + " (1/10 of the rows)", upserts[3].command, lambda k: max(100, k // 10)),
            upserts[4],
        ]
        with served(tls=True, latency_ms=20, **MODEL) as emu:
            prepare(emu)
            res = interleaved(emu, slow, n, reps, "M-", pause=MODEL["window_s"] + 0.5)
        lines += [
            f"## 2. {n:,} upserts, calibrated throttle model on, latency 20 ms",
            "",
            "Dataverse's rates (6,000 requests and 1,200 s of execution per 300 s) on a 3 s window, 52 concurrent; a "
            "request costs 7.2 ms, a `$batch` the sum of its operations, a bulk record a fifth of that (GUESS), and "
            "each request takes its cost. 429s are what the emulator answered; a library that does not retry them "
            "loses those rows.",
            "",
        ]
        write_table(res, slow[0].name, lines, model=True)
        lines.append("")
    if "3" in args.scenarios:
        print(f"scenario 3: fetch-all of {fetch_n:,} rows", flush=True)
        fetchers = [
            Contender("ours: query_entities fetch_all", bench.ours_cmd("fetch")),
            Contender("Microsoft SDK: records.list_pages", bench.peer_cmd("sdk-fetch")),
            Contender("dataverse-api: entity.read", bench.peer_cmd("dvapi-fetch")),
        ]
        with served(tls=True) as emu:
            for start in range(0, fetch_n, 10_000):
                rows = [{"name": f"row {i}", "accountnumber": f"F-{i:07d}"} for i in range(start, start + 10_000)]
                emu.admin.seed("account", rows[: fetch_n - start])
            results: dict[str, list[Outcome]] = {c.name: [] for c in fetchers}
            for _ in range(reps):
                for c in fetchers:
                    r = execute(emu, c.command(emu, "F", fetch_n))
                    results[c.name].append(
                        Outcome(c.name, int(r.get("fetched", 0)), float(r.get("seconds", float("nan"))),
                                float(r.get("cpu_s", 0.0)), float(r.get("peak_rss_mib", 0.0)), error=r.get("error"))
                    )  # fmt: skip
                    print(f"  {c.name:<40} {r}", flush=True)
        base = median(results[fetchers[0].name], "rate")
        lines += [f"## 3. Fetch-all of {fetch_n:,} rows (pages of 5,000), model off, latency 0", ""]
        lines += [
            "| library and way | rows | median s | rows/s | vs ours | peak RSS MiB |",
            "|---|---|---|---|---|---|",
        ]
        for name, outs in results.items():
            rate = median(outs, "rate")
            lines.append(f"| {name} | {outs[0].rows:,} | {median(outs, 'seconds'):.2f} | {rate:,.0f} | "
                         f"{rate / base:.2f}x | {median(outs, 'peak_rss_mib'):.0f} |")  # fmt: skip
        lines.append("")
    if "4" in args.scenarios:
        print(f"scenario 4: {mixed_n:,} mixed batch operations, 5 bad", flush=True)
        bad = {mixed_n // 7, mixed_n // 3 + 1, mixed_n // 2 + 2, 2 * mixed_n // 3 + 3, mixed_n - 1}
        mixers = [
            ("ours: run_batch_operations, continue_on_error", HERE / "ours.py", bench.ours, "mixed"),
            ("Microsoft SDK: batch.execute(continue_on_error=True)", HERE / "peers" / "driver.py", bench.peers,
             "sdk-mixed"),
        ]  # fmt: skip
        lines += [
            f"## 4. {mixed_n:,} mixed batch operations, 5 of them bad (updates of rows that do not exist)",
            "",
            "| library and way | seconds | rows landed (of " + f"{mixed_n - 5:,}) | failures named | right inputs |",
            "|---|---|---|---|---|",
        ]
        with served(tls=True) as emu:
            prepare(emu)
            for i, (name, script, python, run) in enumerate(mixers):
                prefix = f"X{i}"
                plan = mixed_plan(emu, prefix, mixed_n, bad)
                r = execute(emu, [python, str(script), run, *common(emu, prefix, mixed_n), "--plan", str(plan)])
                landed = count_rows(emu, f"startswith(name,'{prefix} ')")
                named = r.get("failed_indexes", [])
                right = "yes" if set(named) == bad else f"no ({sorted(named)[:8]})"
                lines.append(f"| {name} | {r.get('seconds', float('nan')):.2f} | {landed:,} | {len(named)} | {right} |"
                             + (f" error: {r['error']}" if r.get("error") else ""))  # fmt: skip
                print(f"  {name}: landed {landed}, named {named}", flush=True)
        lines += [
            "| dataverse-api | - | - | - | not measured: its `$batch` returns the raw multipart responses, no "
            "per-operation result, and sends no continue-on-error |",
            "",
        ]
    lines.insert(3, f"Load average (1 min) at the start {load_at_start:.1f}, at the end {os.getloadavg()[0]:.1f}: "
                 "anything above the core count means other processes shared the machine.")  # fmt: skip
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
