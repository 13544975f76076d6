"""Where a ``write_entities`` run spends its time against the calibrated model's ceiling: one upsert of ``--records``
new rows (the same run as ``bulk_write.py``'s (c), cold connection and all), then the emulator's request log laid out
on the run's clock.

It prints every request (start and end in ms after the call began, method, what it was, requests in flight when it
arrived), then where the write places were idle: the time before the first write, and each gap between one write's
answer and the next write on the same place (the writes are laid on ``--dop-hint`` places, each taking the place freed
first). The ceiling of ``bulk_write.py`` assumes no gap at all; the sum of the gaps over the places is what the run lost
to the client's own work and its reads. Waits are real. Never part of the test suite.

    .venv/bin/python benchmarks/timeline.py [--records 20000] [--chunk 1000] [--time-scale 1] [--dop-hint 4]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import time
from typing import Any

from bulk_write import KEY, LATENCY_MS, records
from served import served

from connector.connection import Connection
from connector.runtime import Runtime


def kind(entry: dict[str, Any]) -> str:
    path = str(entry["path"]).rsplit("/", 1)[-1]
    if entry["method"] == "GET":
        return f"GET {path.split('(')[0]}"
    return path


def lanes(writes: list[dict[str, Any]], places: int, t0: float) -> list[list[dict[str, Any]]]:
    """The writes laid on ``places`` places in order of arrival, each on the place freed first."""
    free = [(t0, p) for p in range(places)]
    out: list[list[dict[str, Any]]] = [[] for _ in range(places)]
    for w in sorted(writes, key=lambda e: e["wall_start"]):
        _, p = heapq.heappop(free)
        out[p].append(w)
        heapq.heappush(free, (w["wall_end"], p))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--dop-hint", type=int, default=4)
    parser.add_argument("--window-s", type=float, default=3.0)
    parser.add_argument("--quiet", action="store_true", help="only the summary, not every request")
    args = parser.parse_args()
    w = args.window_s
    model = {
        "throttle": "dataverse",
        "latency_ms": LATENCY_MS,
        "window_s": w,
        "max_requests": round(6000 * w / 300),
        "max_exec_s": 1200 * w / 300,
        "time_scale": args.time_scale,
        "dop_hint": args.dop_hint,
    }
    runtime = Runtime(load_entrypoints=False)
    inputs = {"table": "account", "mode": "upsert", "records": records("T", args.records), "chunk_size": args.chunk}
    with served(**model) as emu:
        with Connection.from_config(emu.config) as conn:
            conn.client.request("POST", "EntityDefinitions(LogicalName='account')/Keys", json=KEY)
        time.sleep(w / args.time_scale + 0.5)  # the key's requests leave the window
        emu.admin.clear_requests()
        with Connection.from_config(emu.config) as conn:
            t0 = time.time()
            out = runtime.run_action("write_entities", inputs, conn)
            t1 = time.time()
        log = [e for e in emu.admin.requests() if e.get("wall_end") is not None]
    assert out["summary"]["created"] == args.records, out["summary"]
    log.sort(key=lambda e: e["wall_start"])

    def ms(t: float) -> float:
        return (t - t0) * 1000

    if not args.quiet:
        print(f"{'start':>8}{'end':>8}{'ms':>7}  {'in flight':>9}  request")
        for e in log:
            start, end = ms(e["wall_start"]), ms(e["wall_end"])
            print(f"{start:>8.0f}{end:>8.0f}{end - start:>7.0f}  {e['in_flight_at_start']:>9}  {kind(e)}")
    writes = [e for e in log if e["method"] == "POST" and e["path"].endswith("Multiple")]
    total = ms(t1)
    first = min(ms(e["wall_start"]) for e in writes)
    gaps = []
    for lane in lanes(writes, args.dop_hint, t0):
        gaps += [ms(b["wall_start"]) - ms(a["wall_end"]) for a, b in itertools.pairwise(lane)]
    tail = total - max(ms(e["wall_end"]) for e in writes)
    setup = [e for e in log if "EntityDefinitions" in e["path"] or "sdkmessagefilters" in e["path"]]
    reads = sum(1 for e in log if "/api/data/" in e["path"]) - len(writes) - len(setup)
    print(f"{args.records:,} upserts in {total:,.0f} ms: {len(writes)} writes, {reads} pre-reads, {len(setup)} "
          f"metadata and probe reads")  # fmt: skip
    print(f"before the first write {first:,.0f} ms; after the last answer {tail:,.0f} ms")
    print(f"gaps between writes on one place: {len(gaps)}, total {sum(gaps):,.0f} ms over {args.dop_hint} places, "
          f"largest {max(gaps, default=0):,.0f} ms, mean {sum(gaps) / max(1, len(gaps)):,.1f} ms")  # fmt: skip
    busy = sum(ms(e["wall_end"]) - ms(e["wall_start"]) for e in writes) / args.dop_hint / total
    print(f"write places busy {busy:.1%} of the run")


if __name__ == "__main__":
    main()
