"""``make demo``: the main job end to end against the embedded emulator, one step per capability.

The emulator runs in this process on 127.0.0.1 (a free port); the connector reaches it over a real socket with a
client-credentials connection the emulator issued, exactly as it would reach a Dataverse environment.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from connector.progress import Progress
from connector.runtime import Runtime

console = Console(soft_wrap=True)


def step(title: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = fn()
    elapsed = (time.perf_counter() - started) * 1000
    console.print(f"[bold green]✓[/] {title} [dim]({elapsed:.0f} ms)[/]")
    console.print(json.dumps(result, indent=2, default=str))
    return result


def records_demo(runtime: Runtime, connection: Any) -> None:
    """Upserts by the sample organization's alternate key on accountnumber (one row created, one existing row updated),
    then a query that reads them back with their labels."""
    step(
        "upsert_entity by alternate key (created)",
        lambda: runtime.run_action(
            "upsert_entity",
            {
                "table": "account",
                "key": {"accountnumber": "A-2001"},
                "fields": {"name": "Northwind", "industrycode": "Accounting"},
            },
            connection,
        ),
    )
    step(
        "upsert_entity by alternate key (updated: A-1001 is in the sample data)",
        lambda: runtime.run_action(
            "upsert_entity",
            {"table": "account", "key": {"accountnumber": "A-1001"}, "fields": {"telephone1": "+1 555 0100"}},
            connection,
        ),
    )
    step(
        "query_entities",
        lambda: runtime.run_action(
            "query_entities",
            {
                "table": "account",
                "select": ["name", "accountnumber", "telephone1", "industrycode"],
                "where": [{"column": "accountnumber", "operator": "in", "value": ["A-1001", "A-2001"]}],
                "include_annotations": True,
            },
            connection,
        ),
    )


def bulk_demo(runtime: Runtime, connection: Any) -> None:
    """write_entities: 5,000 upserts by the demo key (1,000 of them existing rows) with 3 bad rows and a duplicate key;
    the bad rows are isolated, the rest land, and the summary says created vs updated."""
    bad = {42, 2718, 4998}
    records: list[dict[str, Any]] = [
        {"key": {"accountnumber": f"B-{i:05d}"}, "fields": {"name": "x" * 200 if i in bad else f"Bulk {i}"}}
        for i in range(4999)
    ]
    records.append({"key": {"accountnumber": "b-00007"}, "fields": {"telephone1": "+1 555 0107"}})  # same key, merged
    existing = [{"fields": {"accountnumber": f"B-{i:05d}", "name": "old"}} for i in range(0, 5000, 5)]
    runtime.run_action("write_entities", {"table": "account", "mode": "create", "records": existing}, connection)

    def upsert() -> dict[str, Any]:
        events: list[Progress] = []  # what `d365 run --progress=json` prints, one snapshot per chunk
        inputs = {"table": "account", "mode": "upsert", "records": records, "chunk_size": 100}
        out = runtime.run_action("write_entities", inputs, connection, progress=events.append)
        return {
            "progress": {"updates": len(events), "last": events[-1].to_dict()},
            "summary": out["summary"],
            "failed": [r for r in out["results"] if r["status"] == "failed"],
            "merged": [r for r in out["results"] if "merged_into" in r],
        }

    step("write_entities: 5,000 upserts with 3 bad rows and a duplicate key (1,000 rows existed)", upsert)


def webhook_demo(runtime: Runtime, connection: Any, emulator: Any) -> None:
    """The webhook trigger subscribed in the emulator, one contact created, and the verified event it delivered."""
    import secrets

    from connector.webhook_server import create_asgi_app
    from dataverse_emulator.testing import serve_asgi

    events: list[dict[str, Any]] = []
    trigger = {"table": "contact", "messages": ["Create"], "secret": secrets.token_urlsafe(24), "post_image": True}
    with serve_asgi(create_asgi_app(trigger, events.append, runtime=runtime)) as receiver:
        subscription = step(
            "subscribe the webhook trigger (serviceendpoint + step)",
            lambda: runtime.subscribe_trigger("webhook", trigger, connection, f"{receiver}/"),
        )
        try:
            runtime.run_action("create_entity", {"table": "contact", "fields": {"lastname": "Webhook"}}, connection)
            emulator.admin.drain_webhooks()
            step(
                "webhook event (verified, flattened)",
                lambda: {k: v for k, v in events[0].items() if k not in ("raw", "post_images")},
            )
        finally:
            runtime.unsubscribe_trigger("webhook", subscription, connection)


def main() -> int:
    from dataverse_emulator.testing import running_emulator

    runtime = Runtime()
    step("actions in the effective manifest", lambda: sorted(runtime.manifest.actions))
    with running_emulator(key_activation_s=0, sample_data=True) as emulator:
        console.print(f"emulator serving {emulator.base_url}")
        config = emulator.connection_config("client_credentials")
        connection = runtime.connection(config)
        try:
            step("test_connection", lambda: runtime.run_action("test_connection", {}, connection))
            step("get_current_user", lambda: runtime.run_action("get_current_user", {}, connection))
            records_demo(runtime, connection)
            bulk_demo(runtime, connection)
            webhook_demo(runtime, connection, emulator)
        finally:
            runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
