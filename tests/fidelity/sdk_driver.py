"""Run one scenario with Microsoft's official Dataverse SDK (powerplatform-dataverse-client) and print a JSON result.

Runs inside ``.venv-fidelity`` (never the project venv), so it imports nothing from this repository:

    .venv-fidelity/bin/python tests/fidelity/sdk_driver.py SCENARIO --base-url URL --connection FILE --tag TAG

The SDK is used unmodified. The only local piece is the credential: a duck-typed azure-core ``TokenCredential`` that
fetches a client-credentials token from the token endpoint named in the emulator's connection file. TLS trust comes
from ``REQUESTS_CA_BUNDLE``, which the caller points at the emulator's CA.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import requests
from azure.core.credentials import AccessToken
from PowerPlatform.Dataverse import col
from PowerPlatform.Dataverse.client import DataverseClient
from PowerPlatform.Dataverse.core.errors import HttpError
from PowerPlatform.Dataverse.models.relationship import ManyToManyRelationshipMetadata
from PowerPlatform.Dataverse.models.upsert import UpsertItem


class ConnectionFileCredential:
    """Client-credentials token from the connection file's ``token_url``, ``client_id`` and ``client_secret``."""

    def __init__(self, connection: dict[str, Any]) -> None:
        self._connection = connection
        self._cache: dict[str, AccessToken] = {}
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        scope = " ".join(scopes)
        cached = self._cache.get(scope)
        if cached is not None and cached.expires_on - 60 > time.time():
            return cached
        self.calls += 1
        response = requests.post(
            self._connection["token_url"],
            data={
                "grant_type": "client_credentials",
                "client_id": self._connection["client_id"],
                "client_secret": self._connection["client_secret"],
                "scope": scope,
            },
            timeout=30,
        )
        response.raise_for_status()
        body = response.json()
        token = AccessToken(body["access_token"], int(time.time()) + int(body.get("expires_in", 3600)))
        self._cache[scope] = token
        return token


def _names(records: Any) -> list[Any]:
    return [r["name"] for r in records]


def scenario_create_retrieve(client: DataverseClient, tag: str) -> dict[str, Any]:
    rid = client.records.create("account", {"name": f"{tag} Contoso", "numberofemployees": 42})
    record = client.records.retrieve("account", rid, select=["name", "numberofemployees"])
    missing = client.records.retrieve("account", "00000000-0000-0000-0000-0000000000ff")
    return {
        "id": rid,
        "record_id": record.id if record is not None else None,
        "data": dict(record.data) if record is not None else None,
        "etag_present": bool(record is not None and record.etag),
        "missing": missing is None,
    }


def scenario_update(client: DataverseClient, tag: str) -> dict[str, Any]:
    rid = client.records.create("account", {"name": f"{tag} before"})
    client.records.update("account", rid, {"name": f"{tag} after", "telephone1": "555-0100"})
    record = client.records.retrieve("account", rid, select=["name", "telephone1"])
    assert record is not None
    return {"name": record["name"], "telephone1": record["telephone1"]}


def scenario_delete(client: DataverseClient, tag: str) -> dict[str, Any]:
    rid = client.records.create("account", {"name": f"{tag} doomed"})
    before = client.records.retrieve("account", rid, select=["name"]) is not None
    client.records.delete("account", rid)
    after = client.records.retrieve("account", rid, select=["name"])
    error = None
    try:
        client.records.delete("account", rid)
    except Exception as exc:  # the SDK's HttpError; its shape is what we report
        error = {"type": type(exc).__name__, "status": getattr(exc, "status_code", None)}
    return {"existed": before, "after": after is None, "second_delete": error}


def _wait_key_active(client: DataverseClient, table: str, schema_name: str, timeout: float = 30.0) -> list[str]:
    statuses: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = {k.schema_name: k for k in client.tables.get_alternate_keys(table)}
        status = keys[schema_name].status if schema_name in keys else "missing"
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        if status in ("Active", "Failed"):
            break
        time.sleep(0.25)
    return statuses


def scenario_alternate_key(client: DataverseClient, tag: str) -> dict[str, Any]:
    info = client.tables.create_alternate_key("contact", "fid_contact_name_key", ["firstname", "lastname"])
    keys = client.tables.get_alternate_keys("contact")
    statuses = _wait_key_active(client, "contact", "fid_contact_name_key")
    final = [k for k in client.tables.get_alternate_keys("contact") if k.schema_name == "fid_contact_name_key"]
    return {
        "created": {
            "schema_name": info.schema_name,
            "key_attributes": list(info.key_attributes),
            "status": info.status,
            "metadata_id_present": bool(info.metadata_id),
        },
        "listed": sorted(k.schema_name for k in keys),
        "statuses": statuses,
        "final": [
            {"schema_name": k.schema_name, "key_attributes": sorted(k.key_attributes), "status": k.status}
            for k in final
        ],
        "same_id": bool(final) and final[0].metadata_id == info.metadata_id,
    }


def scenario_upsert(client: DataverseClient, tag: str) -> dict[str, Any]:
    client.tables.create_alternate_key("account", "fid_accountnumber_key", ["accountnumber"])
    statuses = _wait_key_active(client, "account", "fid_accountnumber_key")
    number = f"{tag}-A1"
    client.records.upsert(
        "account", [UpsertItem(alternate_key={"accountnumber": number}, record={"name": f"{tag} first"})]
    )
    first = client.records.list("account", filter=f"accountnumber eq '{number}'", select=["name", "accountnumber"])
    assert all("accountid" in r for r in first), "a $select response carries the primary key"
    client.records.upsert(
        "account", [{"alternate_key": {"accountnumber": number}, "record": {"name": f"{tag} second"}}]
    )
    second = client.records.list("account", filter=f"accountnumber eq '{number}'", select=["name", "accountnumber"])
    quoted = f"{tag}-O'Brien"
    client.records.upsert("account", [UpsertItem(alternate_key={"accountnumber": quoted}, record={"name": "quoted"})])
    third = client.records.list("account", filter=col("accountnumber") == quoted, select=["name"])
    return {
        "key_statuses": statuses,
        "after_create": [{"name": r["name"], "accountnumber": r["accountnumber"]} for r in first],
        "after_update": [{"name": r["name"], "accountnumber": r["accountnumber"]} for r in second],
        "same_id": [r["accountid"] for r in first] == [r["accountid"] for r in second],
        "quoted_key": _names(third),
    }


def scenario_list_paging(client: DataverseClient, tag: str) -> dict[str, Any]:
    for i in range(5):
        client.records.create("account", {"name": f"{tag}-page-{i}", "numberofemployees": i})
    flt = f"startswith(name,'{tag}-page-')"
    pages = list(client.records.list_pages("account", filter=flt, select=["name"], orderby=["name asc"], page_size=2))
    everything = client.records.list("account", filter=flt, select=["name"], orderby=["name desc"], page_size=2)
    top = client.records.list("account", filter=flt, select=["name"], orderby=["name asc"], top=3)
    top_and_page = client.records.list(
        "account", filter=flt, select=["name"], orderby=["name asc"], top=3, page_size=10
    )
    return {
        "pages": [_names(p) for p in pages],
        "all_desc": _names(everything),
        "top": _names(top),
        "top_with_page_size": _names(top_and_page),
    }


def scenario_query_builder(client: DataverseClient, tag: str) -> dict[str, Any]:
    rows = [
        {"name": f"{tag}-qb-alpha", "numberofemployees": 10, "telephone1": "555-0001"},
        {"name": f"{tag}-qb-beta", "numberofemployees": 20},
        {"name": f"{tag}-qb-gamma", "numberofemployees": 30, "telephone1": "555-0003"},
        {"name": f"{tag}-qb-50%_off", "numberofemployees": 40},
    ]
    for row in rows:
        client.records.create("account", row)
    mine = col("name").startswith(f"{tag}-qb-")

    def run(where: Any, *, desc: bool = False) -> list[Any]:
        query = client.query.builder("account").select("name").where(where).order_by("name", descending=desc)
        return _names(query.execute())

    pages = (
        client.query.builder("account")
        .select("name", "numberofemployees")
        .where(mine)
        .order_by("numberofemployees")
        .page_size(3)
        .execute_pages()
    )
    return {
        "ge": run(mine & (col("numberofemployees") >= 20)),
        "eq_or": run(mine & ((col("numberofemployees") == 10) | (col("numberofemployees") == 30))),
        "in": run(mine & col("numberofemployees").in_([10, 40])),
        "not_in": run(mine & col("numberofemployees").not_in([10, 40])),
        "between": run(mine & col("numberofemployees").between(15, 35)),
        "contains": run(mine & col("name").contains("et")),
        "endswith": run(mine & col("name").endswith("ALPHA")),
        "like": run(col("name").like(f"{tag}-qb-g%")),
        "literal_percent": run(mine & col("name").contains("50%_")),
        "wildcard_underscore": run(mine & col("name").contains("qb-_eta")),
        "bracket_escape": run(mine & col("name").contains("0[%][_]o")),
        "is_null": run(mine & col("telephone1").is_null()),
        "is_not_null": run(mine & col("telephone1").is_not_null(), desc=True),
        "not": run(mine & ~col("name").endswith("beta")),
        "top": _names(client.query.builder("account").select("name").where(mine).order_by("name").top(2).execute()),
        "pages": [_names(p) for p in pages],
    }


def scenario_fetchxml_paging(client: DataverseClient, tag: str) -> dict[str, Any]:
    for i in range(7):
        client.records.create("account", {"name": f"{tag}-fx-{i}", "numberofemployees": i})
    xml = (
        "<fetch count='3'><entity name='account'><attribute name='name'/><attribute name='numberofemployees'/>"
        f"<filter><condition attribute='name' operator='begins-with' value='{tag}-fx-'/></filter>"
        "<order attribute='name'/></entity></fetch>"
    )
    pages = [[r["name"] for r in page] for page in client.query.fetchxml(xml).execute_pages()]
    agg = (
        "<fetch aggregate='true'><entity name='account'><attribute name='numberofemployees' alias='total' "
        "aggregate='sum'/>"
        f"<filter><condition attribute='name' operator='begins-with' value='{tag}-fx-'/></filter></entity></fetch>"
    )
    return {"pages": pages, "sum": [dict(r)["total"] for r in client.query.fetchxml(agg).execute()]}


def scenario_tables(client: DataverseClient, tag: str) -> dict[str, Any]:
    schema = f"new_{tag}Gadget"
    created = client.tables.create(schema, {"new_Price": "decimal", "new_Notes": "memo"}, solution="fidelitysolution")
    added = client.tables.add_columns(schema, {"new_Weight": "int", "new_Code": "string"})
    got = client.tables.get(schema)
    listed = [t["LogicalName"] for t in client.tables.list(select=["LogicalName"])]
    key = client.tables.create_alternate_key(schema, f"new_{tag}_code_key", ["new_code"])
    rid = client.records.create(schema, {"new_name": "G1", "new_price": 9.5, "new_weight": 3, "new_code": "C1"})
    back = client.records.retrieve(schema, rid, select=["new_name", "new_price", "new_weight", "new_code"])
    return {
        "created": [created.logical_name, created.entity_set_name, sorted(created.columns_created or [])],
        "added": added,
        "got": [got.schema_name, got.logical_name, got.entity_set_name] if got else None,
        "listed": schema.lower() in listed and "account" in listed,
        "key": [key.schema_name, key.key_attributes],
        "record": {k: back[k] for k in ("new_name", "new_price", "new_weight", "new_code")},
    }


def scenario_file_upload(client: DataverseClient, tag: str) -> dict[str, Any]:
    import os
    import tempfile

    rid = client.records.create("account", {"name": f"{tag}-file"})
    results = {}
    for mode, size in (("small", 3000), ("chunk", 9000)):
        with tempfile.NamedTemporaryFile("wb", suffix=f"-{mode}.bin", delete=False) as fh:
            fh.write(bytes(range(256)) * (size // 256) + b"!" * (size % 256))
        try:
            client.files.upload("account", rid, "new_Attachment", fh.name, mode=mode, if_none_match=mode == "small")
        finally:
            os.unlink(fh.name)
        row = client.records.retrieve("account", rid, select=["new_attachment_name"])
        results[mode] = row["new_attachment_name"].endswith(f"-{mode}.bin")
    return results


def scenario_bulk(client: DataverseClient, tag: str) -> dict[str, Any]:
    """CreateMultiple, UpdateMultiple (broadcast) and UpsertMultiple by an alternate key, as the SDK sends them."""
    rows = [{"name": f"{tag}-bulk-{i}", "numberofemployees": i} for i in range(3)]
    ids = client.records.create("account", rows)
    client.records.update("account", ids, {"telephone1": "555-0199"})
    updated = client.records.list(
        "account", filter=f"startswith(name,'{tag}-bulk-')", select=["name", "telephone1"], orderby=["name asc"]
    )
    client.tables.create_alternate_key("lead", "fid_lead_email_key", ["emailaddress1"])
    statuses = _wait_key_active(client, "lead", "fid_lead_email_key")
    mails = [f"{tag}-{i}@example.com" for i in range(3)]
    client.records.upsert(
        "lead",
        [UpsertItem(alternate_key={"emailaddress1": m}, record={"subject": f"{tag} first"}) for m in mails[:2]],
    )
    first = client.records.list("lead", filter=f"startswith(emailaddress1,'{tag}-')", select=["emailaddress1"])
    client.records.upsert(
        "lead",
        [UpsertItem(alternate_key={"emailaddress1": m}, record={"subject": f"{tag} second"}) for m in mails[1:]],
    )
    second = client.records.list(
        "lead",
        filter=f"startswith(emailaddress1,'{tag}-')",
        select=["emailaddress1", "subject"],
        orderby=["emailaddress1 asc"],
    )
    first_ids = {r["emailaddress1"]: r["leadid"] for r in first}
    return {
        "ids": ids,
        "returned_ids": sorted(r["accountid"] for r in updated),
        "after_update": [{"name": r["name"], "telephone1": r["telephone1"]} for r in updated],
        "key_statuses": statuses,
        "upserted": [{"emailaddress1": r["emailaddress1"], "subject": r["subject"]} for r in second],
        "kept_ids": [first_ids.get(r["emailaddress1"]) == r["leadid"] for r in second],
    }


def _batch_summary(result: Any) -> list[dict[str, Any]]:
    return [
        {
            "status": r.status_code,
            "content_id": r.content_id,
            "entity_id": bool(r.entity_id),
            "error_code": r.error_code,
        }
        for r in result.responses
    ]


def scenario_batch(client: DataverseClient, tag: str) -> dict[str, Any]:
    """A change set with a ``$1`` reference, then continue-on-error and stop-on-error batches."""
    batch = client.batch.new()
    with batch.changeset() as cs:
        ref = cs.records.create("account", {"name": f"{tag}-batch-parent"})
        cs.records.create("contact", {"lastname": f"{tag}-batch-child", "parentcustomerid_account@odata.bind": ref})
        cs.records.update("account", ref, {"telephone1": "555-0142"})
    changeset = batch.execute()
    parent = client.records.list("account", filter=f"name eq '{tag}-batch-parent'", select=["name", "telephone1"])
    child = client.records.list(
        "contact", filter=f"lastname eq '{tag}-batch-child'", select=["_parentcustomerid_value"]
    )
    too_long = "x" * 161
    coe = client.batch.new()
    coe.records.create("account", {"name": f"{tag}-coe-1"})
    coe.records.create("account", {"name": too_long})
    coe.records.create("account", {"name": f"{tag}-coe-2"})
    continued = coe.execute(continue_on_error=True)
    stop = client.batch.new()
    stop.records.create("account", {"name": f"{tag}-stop-1"})
    stop.records.create("account", {"name": too_long})
    stop.records.create("account", {"name": f"{tag}-stop-2"})
    stopped = stop.execute()
    names = client.records.list(
        "account", filter=f"startswith(name,'{tag}-coe-') or startswith(name,'{tag}-stop-')", select=["name"]
    )
    return {
        "changeset": _batch_summary(changeset),
        "parent": [{"name": r["name"], "telephone1": r["telephone1"]} for r in parent],
        "child_linked": [r["_parentcustomerid_value"] for r in child] == [r["accountid"] for r in parent],
        "continue_on_error": _batch_summary(continued),
        "stop_on_error": _batch_summary(stopped),
        "names": sorted(_names(names)),
    }


def _organization(client: DataverseClient) -> dict[str, list[str]]:
    """What a schema round trip must leave as it found: the tables and the relationships."""
    tables = sorted(t["LogicalName"] for t in client.tables.list(select=["LogicalName"]))
    relationships = sorted(r["SchemaName"] for r in client.tables.list_relationships(select=["SchemaName"]))
    return {"tables": tables, "relationships": relationships}


def _outcome(action: Callable[[], Any]) -> list[Any]:
    """[status, Dataverse code] of a refusal, or ["ok", whether the SDK returned nothing]."""
    try:
        value = action()
    except HttpError as e:
        return [e.status_code, (e.details or {}).get("service_error_code")]
    return ["ok", value is None]


def scenario_schema_lifecycle(client: DataverseClient, tag: str) -> dict[str, Any]:
    """Create two tables with columns, a lookup (1:N, parental) and an N:N relationship, use them, then delete the
    relationships, a column and the tables: the organization is as before."""
    before = _organization(client)
    shelf, book = f"new_{tag}Shelf", f"new_{tag}Book"
    client.tables.create(shelf, {"new_Width": "int", "new_Label": "string"})
    client.tables.create(book, {"new_Pages": "int"})
    lookup = client.tables.create_lookup_field(book.lower(), "new_ShelfId", shelf.lower(), cascade_delete="Cascade")
    many = client.tables.create_many_to_many_relationship(
        ManyToManyRelationshipMetadata(
            schema_name=f"new_{tag}book_account", entity1_logical_name=book.lower(), entity2_logical_name="account"
        )
    )
    sid = client.records.create(shelf, {"new_name": "S1", "new_width": 80, "new_label": "oak"})
    bid = client.records.create(
        book, {"new_name": "B1", "new_pages": 300, "new_ShelfId@odata.bind": f"/{shelf.lower()}s({sid})"}
    )
    bound = client.records.retrieve(book, bid, select=["_new_shelfid_value"])["_new_shelfid_value"] == sid
    refused = _outcome(lambda: client.tables.delete(shelf))  # the book's lookup depends on the shelf table
    client.records.delete(shelf, sid)  # parental: the book goes with its shelf
    cascaded = _outcome(lambda: client.records.retrieve(book, bid))
    client.tables.delete_relationship(many.relationship_id)
    client.tables.delete_relationship(lookup.relationship_id)
    removed = client.tables.remove_columns(shelf, ["new_Width"])
    columns = sorted(c["LogicalName"] for c in client.tables.list_columns(shelf, select=["LogicalName"]))
    client.tables.delete(book)
    client.tables.delete(shelf)
    return {
        "bound": bound,
        "refused": refused,
        "cascaded": cascaded,
        "removed": removed,
        "width_gone": "new_width" not in columns and "new_label" in columns,
        "restored": _organization(client) == before,
    }


SCENARIOS: dict[str, Callable[[DataverseClient, str], dict[str, Any]]] = {
    "create_retrieve": scenario_create_retrieve,
    "update": scenario_update,
    "delete": scenario_delete,
    "alternate_key": scenario_alternate_key,
    "upsert": scenario_upsert,
    "list_paging": scenario_list_paging,
    "query_builder": scenario_query_builder,
    "bulk": scenario_bulk,
    "batch": scenario_batch,
    "fetchxml_paging": scenario_fetchxml_paging,
    "tables": scenario_tables,
    "file_upload": scenario_file_upload,
    "schema_lifecycle": scenario_schema_lifecycle,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--connection", required=True)
    parser.add_argument("--tag", required=True)
    args = parser.parse_args(argv)
    with open(args.connection, encoding="utf-8") as fh:
        connection = json.load(fh)
    credential = ConnectionFileCredential(connection)
    with DataverseClient(args.base_url, credential) as client:
        result = SCENARIOS[args.scenario](client, args.tag)
    result["token_requests"] = credential.calls
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
