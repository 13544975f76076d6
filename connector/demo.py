"""``make demo``: the main job end to end against the embedded emulator, one step per capability.

The emulator runs in this process on 127.0.0.1 (a free port); the connector reaches it over a real socket with a
client-credentials connection the emulator issued, exactly as it would reach a Dataverse environment.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
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


def _warehouse(path: Path) -> None:
    """200 companies and 600 people, with three deliberate bad rows: an unknown industry label, a last name over
    the column's 50 characters, and a person whose company number names no company."""
    import duckdb

    industries = ["Accounting", "Consulting", "Financial", "Insurance"]
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE companies (number VARCHAR, name VARCHAR, industry VARCHAR)")
        db.executemany(
            "INSERT INTO companies VALUES (?, ?, ?)",
            [[f"W-{i:04}", f"Company {i}", industries[i % 4]] for i in range(200)],
        )
        db.execute("UPDATE companies SET industry = 'Bakery' WHERE number = 'W-0007'")
        db.execute("CREATE TABLE people (email VARCHAR, first VARCHAR, last VARCHAR, company VARCHAR)")
        db.executemany(
            "INSERT INTO people VALUES (?, ?, ?, ?)",
            [[f"p{i}@example.com", f"First{i}", f"Last{i}", f"W-{i % 200:04}"] for i in range(600)],
        )
        db.execute("UPDATE people SET last = repeat('x', 60) WHERE email = 'p5@example.com'")
        db.execute("UPDATE people SET company = 'W-9999' WHERE email = 'p9@example.com'")


def sync_demo(connection: Any, folder: Path) -> None:
    """Reverse-ETL: a DuckDB warehouse synced into accounts, then contacts (a lookup to accounts by account number);
    some rows change and the next run sends only those; the ledger says what became of every row."""
    from connector.policy import OperatorPolicy
    from connector.sync.definition import load_definition
    from connector.sync.runner import run_definition
    from connector.sync.state import StateStore

    policy = OperatorPolicy(preset="local")
    _warehouse(folder / "warehouse.duckdb")
    connection.client.request(
        "POST",
        "EntityDefinitions(LogicalName='contact')/Keys",
        json={
            "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
            "SchemaName": "demo_contactemail",
            "DisplayName": {"LocalizedLabels": [{"Label": "Email", "LanguageCode": 1033}]},
            "KeyAttributes": ["emailaddress1"],
        },
    )
    connection.metadata.invalidate("contact")
    accounts = {
        "name": "accounts",
        "source": {"duckdb": "warehouse.duckdb", "table": "companies"},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [
            {"source": "number", "target": "accountnumber"},
            {"source": "name", "target": "name"},
            {"source": "industry", "target": "industrycode"},
        ],
    }
    contacts = {
        "name": "contacts",
        "source": {"duckdb": "warehouse.duckdb", "table": "people"},
        "target": "contact",
        "match": {"key": ["emailaddress1"]},
        "mapping": [
            {"source": "email", "target": "emailaddress1"},
            {"source": "first", "target": "firstname"},
            {"source": "last", "target": "lastname"},
            {"target": "parentcustomerid", "lookup": {"table": "account", "key": {"accountnumber": "company"}}},
        ],
    }

    def run(data: dict[str, Any], **kw: Any) -> dict[str, Any]:
        definition = load_definition(data, policy=policy, base_dir=folder)
        return run_definition(definition, connection, policy=policy, base_dir=folder, **kw).to_dict()

    step("sync accounts --dry-run (the plan; nothing written)", lambda: run(accounts, dry_run=True)["plan"]["counts"])
    step("sync accounts: 200 companies (one unknown industry label)", lambda: run(accounts))
    step("sync contacts: 600 people (a lookup to accounts; a too-long name, an unknown company)", lambda: run(contacts))
    import duckdb

    with duckdb.connect(str(folder / "warehouse.duckdb")) as db:
        db.execute("UPDATE people SET first = first || ' Jr' WHERE email IN ('p1@example.com', 'p2@example.com')")
        db.execute("UPDATE people SET last = 'Fixed' WHERE email = 'p5@example.com'")
    step("sync contacts again: only the 3 changed rows are sent, the failed ones retried", lambda: run(contacts))
    store = StateStore(f"sqlite:///{folder / 'contacts.sync.sqlite'}", "contacts")
    try:
        step(
            "sync history contacts",
            lambda: [{"run": r.id, "status": r.status, "counts": r.counts} for r in store.runs()],
        )
        failed = [e.to_dict() for e in store.ledger(store.runs()[-1].id) if e.outcome == "failed"]
        step("sync results (the first run's failed rows)", lambda: failed)
    finally:
        store.close()


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
            pool = runtime.connection({**config, "additional_identities": [emulator.admin.add_app()]})
            step(
                "test_connection through an identity pool of 2 application users",
                lambda: runtime.run_action("test_connection", {}, pool)["identities"],
            )
            records_demo(runtime, connection)
            bulk_demo(runtime, connection)
            webhook_demo(runtime, connection, emulator)
            with tempfile.TemporaryDirectory(prefix="d365-demo-") as folder:
                sync_demo(connection, Path(folder))
        finally:
            runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
