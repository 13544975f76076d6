"""The bulk writer against a scripted Dataverse (``httpx.MockTransport``): every request is pinned.

``BulkServer`` keeps account rows in a dict and answers the support probe, ``In`` reads and the three bulk messages as
reference sections 7 and 15.3 describe them: all-or-nothing, the failing row's code and message, 204 without
per-record results for UpsertMultiple. A name containing ``BAD`` is refused with ``0x80044331``, so bisection can be
checked to the request.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from connector import bulk
from connector.bulk import WriteOptions, write_entities
from connector.clock import FakeClock
from connector.connection import Connection
from connector.errors import InputError
from connector.multipart import BatchOperation, OperationResponse, decode_batch, encode_batch_response
from connector.runtime import Runtime
from tests.bulk.conftest import FakeDataverse

API = FakeDataverse.API
BAD = {"code": "0x80044331", "message": "A validation error occurred.  The length of the 'name' attribute is too long."}


class BulkServer:
    """Account rows by id; the answers Dataverse gives to what the writer sends."""

    def __init__(self, fake: FakeDataverse, *, supported: bool = True) -> None:
        self.fake = fake
        self.supported = supported
        self.rows: dict[str, dict[str, Any]] = {}
        self.drop_next_commit = False
        self.before_write: list[Any] = []  # callables run before the next bulk message (another writer's work)
        self.before_read: list[Any] = []  # callables run before the next read of rows (a pre-read)
        self.batched_reads: list[str] = []  # the URLs of reads sent together in a $batch
        fake.respond = self.respond

    def seed(self, accountnumber: str, name: str = "old") -> str:
        rid = f"00000000-0000-4000-8000-{len(self.rows):012d}"
        self.rows[rid] = {"accountid": rid, "accountnumber": accountnumber, "name": name}
        return rid

    @property
    def writes(self) -> list[httpx.Request]:
        return [r for r in self.fake.data if r.method != "GET"]

    @property
    def reads(self) -> list[httpx.Request]:
        return [r for r in self.fake.data if r.method == "GET" and "sdkmessagefilters" not in r.url.path]

    def respond(self, request: httpx.Request) -> httpx.Response:
        path = unquote(request.url.path.removeprefix("/api/data/v9.2/"))
        if path == "sdkmessagefilters":
            names = ["CreateMultiple", "UpdateMultiple"] if self.supported else []
            return httpx.Response(200, json={"value": [{"sdkmessageid": {"name": n}} for n in names]})
        if request.method == "GET" and path == "accounts":
            while self.before_read:
                self.before_read.pop()()
            return httpx.Response(200, json={"value": self.read(request.url.params["$filter"])})
        if path.startswith("accounts/Microsoft.Dynamics.CRM."):
            return self.bulk(path.rsplit(".", 1)[1], json.loads(request.content)["Targets"])
        if path == "$batch":
            return self.batch(request)
        raise AssertionError(f"unexpected request {request.method} {request.url}")

    def read(self, filter_: str) -> list[dict[str, Any]]:
        match = re.fullmatch(r"Microsoft\.Dynamics\.CRM\.In\(PropertyName='(\w+)',PropertyValues=\[(.*)\]\)", filter_)
        assert match, filter_
        column, values = match.group(1), {v.strip("'").lower() for v in match.group(2).split(",")}
        return [row for row in self.rows.values() if str(row.get(column, "")).lower() in values]

    def bulk(self, message: str, targets: list[dict[str, Any]]) -> httpx.Response:
        while self.before_write:
            self.before_write.pop()()
        staged = {k: dict(v) for k, v in self.rows.items()}
        ids = []
        for t in targets:
            assert t["@odata.type"] == "Microsoft.Dynamics.CRM.account"
            assert "@odata.id" not in t or message == "UpsertMultiple"
            if "BAD" in str(t.get("name", "")):
                return httpx.Response(400, json={"error": BAD})
            rid = t.get("accountid") or self.by_odata_id(staged, t.get("@odata.id")) or str(uuid.uuid4())
            if message == "CreateMultiple" and rid in staged:
                return httpx.Response(412, json={"error": {"code": "0x80040237", "message": "duplicate"}})
            if message == "UpdateMultiple" and rid not in staged:
                return httpx.Response(404, json={"error": {"code": "0x80040217", "message": "missing"}})
            number = t.get("accountnumber")
            if number and any(r.get("accountnumber") == number and i != rid for i, r in staged.items()):
                return httpx.Response(412, json={"error": {"code": "0x80060892", "message": "key exists"}})
            fields = {k: v for k, v in t.items() if not k.startswith("@")}
            keyed = re.fullmatch(r"accounts\(accountnumber='(.*)'\)", unquote(t.get("@odata.id", "")))
            if keyed:  # a row created by key gets the key's values
                fields["accountnumber"] = keyed.group(1)
            staged[rid] = {**staged.get(rid, {}), **fields}
            ids.append(rid)
        self.rows = staged
        if self.drop_next_commit:  # committed, then the answer is lost
            self.drop_next_commit = False
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if message == "CreateMultiple":
            return httpx.Response(200, json={"Ids": ids})
        return httpx.Response(204)

    @staticmethod
    def by_odata_id(rows: dict[str, dict[str, Any]], odata_id: str | None) -> str | None:
        """The id of the row an ``@odata.id`` such as ``accounts(accountnumber='A-1')`` names, if it exists."""
        match = re.fullmatch(r"accounts\(accountnumber='(.*)'\)", unquote(odata_id or ""))
        if not match:
            return None
        return next((i for i, r in rows.items() if r.get("accountnumber", "").lower() == match.group(1).lower()), None)

    def batch(self, request: httpx.Request) -> httpx.Response:
        operations = decode_batch(request.headers["Content-Type"], request.content)
        if all(isinstance(op, BatchOperation) and op.method == "GET" for op in operations):  # the writer's reads
            return self.batch_of_reads([op.url for op in operations if isinstance(op, BatchOperation)])
        answers = []
        for part in re.findall(rb"\r\n(POST|PATCH) \S+ HTTP/1.1\r\n.*?\r\n\r\n(\{.*?\})\r\n--", request.content, re.S):
            body = json.loads(part[1])
            if "BAD" in str(body.get("name", "")):
                answers.append(OperationResponse(400, "Bad Request", body=json.dumps({"error": BAD}).encode()))
                continue
            self.rows[body["accountid"]] = body
            entity = (("OData-EntityId", f"{API}/accounts({body['accountid']})"),)
            answers.append(OperationResponse(204, "No Content", headers=entity))
        content_type, payload = encode_batch_response(answers)
        return httpx.Response(200, headers={"Content-Type": content_type}, content=payload)

    def batch_of_reads(self, urls: list[str]) -> httpx.Response:
        """Reads sent together as one ``$batch``: each answered as the same GET alone would be."""
        while self.before_read:
            self.before_read.pop()()
        self.batched_reads += urls
        answers = []
        for url in urls:
            filter_ = httpx.URL(url).params["$filter"]
            body = json.dumps({"value": self.read(filter_)}).encode()
            answers.append(OperationResponse(200, "OK", (("Content-Type", "application/json"),), body))
        content_type, payload = encode_batch_response(answers)
        return httpx.Response(200, headers={"Content-Type": content_type}, content=payload)


def test_write_entities_upsert_reports_created_and_updated_and_merges_duplicates(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    server = BulkServer(fake)
    existing = server.seed("A-2")
    records = [{"key": {"accountnumber": f"A-{i}"}, "fields": {"name": f"n{i}"}} for i in range(5)]
    records.append({"key": {"accountnumber": "a-1"}, "fields": {"numberofemployees": 555}})  # same key, other case
    out = runtime.run_action(
        "write_entities",
        {"table": "account", "mode": "upsert", "records": records, "chunk_size": 3, "bypass_custom_plugins": True},
        conn,
    )
    statuses = [(r["index"], r["status"]) for r in out["results"]]
    assert statuses == [(0, "created"), (1, "created"), (2, "updated"), (3, "created"), (4, "created"), (5, "created")]
    assert out["results"][1]["merged_into"] == 5 and out["results"][1]["id"] == out["results"][5]["id"]
    assert out["results"][2]["id"] == existing
    assert out["summary"] == {
        "total": 6,
        "created": 5,
        "updated": 1,
        "failed": 0,
        "unknown": 0,
        "already_present": 0,
        "merged": 1,
        "chunks": 2,
        "split_requests": 0,
        "pre_reads": 2,
    }
    # one In read and one UpsertMultiple per chunk; rows to create carry a client id and their key columns
    assert [r.method for r in server.writes] == ["POST", "POST"]
    assert all(r.headers["MSCRM.BypassCustomPluginExecution"] == "true" for r in server.writes)
    chunks = [json.loads(w.content)["Targets"] for w in server.writes]  # the two chunks write side by side
    first = next(c for c in chunks if c[0].get("accountnumber") == "A-0")
    assert [t.get("accountnumber") for t in first] == ["A-0", "a-1", None]  # merged record: the later key wins
    assert first[1]["name"] == "n1" and first[1]["numberofemployees"] == 555
    assert {r["accountnumber"]: r["name"] for r in server.rows.values()}["A-2"] == "n2"
    assert len(server.rows) == 5


def test_write_entities_bisects_a_failed_chunk_down_to_the_bad_rows(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    server = BulkServer(fake)
    bad = {5, 6, 29}
    records = [{"fields": {"name": "BAD" if i in bad else f"n{i}"}} for i in range(32)]
    out = runtime.run_action("write_entities", {"table": "account", "mode": "create", "records": records}, conn)
    failed = [r for r in out["results"] if r["status"] == "failed"]
    assert [r["index"] for r in failed] == sorted(bad)
    assert {r["code"] for r in failed} == {"0x80044331"}
    assert "too long" in failed[0]["message"]
    assert out["summary"]["created"] == 29 and len(server.rows) == 29
    # all ids are time-ordered client ids, kept in the output
    assert all(re.fullmatch(r"[0-9a-f-]{14}7[0-9a-f-]{21}", r["id"]) for r in out["results"] if r["index"] not in bad)
    assert [r["id"] for r in failed] == [None, None, None]  # an id generated here names no row
    assert len(server.writes) == 1 + out["summary"]["split_requests"]
    assert out["summary"]["split_requests"] <= 2 * len(bad) * math.ceil(math.log2(32))


def test_a_lost_answer_after_commit_is_confirmed_not_duplicated(fake: FakeDataverse) -> None:
    server = BulkServer(fake)
    conn = fake.connect(FakeClock())
    server.drop_next_commit = True
    report = write_entities(conn, "account", "create", [{"fields": {"name": f"n{i}"}} for i in range(10)])
    assert [r.status for r in report.results] == ["created"] * 10
    assert len(server.rows) == 10
    # sent, lost, resent (duplicate key), confirmed by one In read of the chunk's ids
    assert [r.method for r in fake.data if "sdkmessagefilters" not in r.url.path] == ["POST", "POST", "GET"]


def test_without_client_ids_a_lost_answer_is_unknown(fake: FakeDataverse) -> None:
    server = BulkServer(fake)
    conn = fake.connect(FakeClock())
    server.drop_next_commit = True
    report = write_entities(
        conn, "account", "create", [{"fields": {"name": "a"}}], WriteOptions(client_ids=False, chunk_size=10)
    )
    assert [(r.status, r.code) for r in report.results] == [("unknown", "NetworkError")]
    assert len(server.writes) == 1  # a create without an id is never sent twice


def test_update_by_key_resolves_guids_first_and_reports_missing_keys(fake: FakeDataverse, conn: Connection) -> None:
    server = BulkServer(fake)
    a1 = server.seed("A-1")
    records = [
        {"key": {"accountnumber": "A-1"}, "fields": {"name": "new"}},
        {"key": {"accountnumber": "nope"}, "fields": {"name": "x"}},
    ]
    report = write_entities(conn, "account", "update", records)
    assert [(r.status, r.id, r.code) for r in report.results] == [("updated", a1, None), ("failed", None, "0x80040217")]
    [update] = server.writes
    assert json.loads(update.content)["Targets"] == [
        {"@odata.type": "Microsoft.Dynamics.CRM.account", "accountid": a1, "name": "new"}
    ]
    assert server.rows[a1]["name"] == "new"


def test_tables_without_bulk_messages_go_through_batch_with_continue_on_error(
    fake: FakeDataverse, conn: Connection
) -> None:
    server = BulkServer(fake, supported=False)
    records = [{"fields": {"name": n}} for n in ("a", "BAD", "c")]
    report = write_entities(conn, "account", "create", records)
    assert report.route == "batch"
    assert [(r.status, r.code) for r in report.results] == [
        ("created", None),
        ("failed", "0x80044331"),
        ("created", None),
    ]
    [batch] = server.writes
    assert batch.url.path.endswith("/$batch") and batch.headers["Prefer"] == "odata.continue-on-error"
    assert len(server.rows) == 2


def test_support_is_probed_once_per_table_and_connection(fake: FakeDataverse, conn: Connection) -> None:
    BulkServer(fake)
    for _ in range(3):
        write_entities(conn, "account", "create", [{"fields": {"name": "a"}}])
    assert sum("sdkmessagefilters" in r.url.path for r in fake.requests) == 1


def test_bypass_headers() -> None:
    assert bulk.bypass_headers(
        business_logic=["CustomSync", "CustomAsync"], suppress_callback_registration_expander_job=True
    ) == {
        "MSCRM.BypassBusinessLogicExecution": "CustomSync,CustomAsync",
        "MSCRM.SuppressCallbackRegistrationExpanderJob": "true",
    }
    with pytest.raises(InputError):
        bulk.bypass_headers(business_logic=["Everything"])


def test_write_entities_refuses_bad_records_before_any_request(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    BulkServer(fake)
    records: list[dict[str, Any]] = [
        {"fields": {"name": "ok"}},
        {"fields": {"nmae": "typo"}},
        {"key": {"accountnumber": "A-1"}, "fields": {"industrycode": "Nope"}},
    ]
    with pytest.raises(InputError) as caught:
        runtime.run_action("write_entities", {"table": "account", "mode": "create", "records": records}, conn)
    paths = [p.path for p in caught.value.problems]
    assert paths == ["$.records[1].fields.nmae", "$.records[2].key", "$.records[2].fields.industrycode"]
    with pytest.raises(InputError) as caught:
        runtime.run_action(
            "write_entities", {"table": "account", "mode": "update", "records": [{"fields": {"name": "x"}}]}, conn
        )
    assert [p.path for p in caught.value.problems] == ["$.records[0].id"]
    with pytest.raises(InputError):
        runtime.run_action("write_entities", {"table": "account", "mode": "merge", "records": []}, conn)
    assert fake.data == []  # metadata reads only


def test_an_upsert_whose_key_was_created_meanwhile_becomes_an_update(fake: FakeDataverse, conn: Connection) -> None:
    server = BulkServer(fake)
    records = [{"key": {"accountnumber": f"A-{i}"}, "fields": {"name": f"n{i}"}} for i in range(4)]
    server.before_write.append(lambda: server.seed("A-2", "someone else"))  # after the pre-read, before the write
    report = write_entities(conn, "account", "upsert", records)
    assert [r.status for r in report.results] == ["created", "created", "updated", "created"]
    other = next(r for r in server.rows.values() if r["accountnumber"] == "A-2")
    assert report.results[2].id == other["accountid"] and other["name"] == "n2"
    assert len(server.rows) == 4


def test_an_upsert_by_key_without_client_ids_is_resent_after_a_lost_answer(fake: FakeDataverse) -> None:
    server = BulkServer(fake)
    conn = fake.connect(FakeClock())
    server.drop_next_commit = True
    records = [{"key": {"accountnumber": f"A-{i}"}, "fields": {"name": f"n{i}"}} for i in range(3)]
    report = write_entities(conn, "account", "upsert", records, WriteOptions(client_ids=False))
    assert [(r.status, r.id) for r in report.results] == [("created", None)] * 3  # Dataverse says no id for these
    targets = [json.loads(r.content)["Targets"] for r in server.writes]
    assert len(targets) == 2 and targets[0] == targets[1]  # the same request again: upsert by key is idempotent
    assert targets[0][0]["@odata.id"] == "accounts(accountnumber='A-0')"
    assert len(server.rows) == 3


def test_update_records_naming_one_row_by_id_and_by_key_are_merged(fake: FakeDataverse, conn: Connection) -> None:
    server = BulkServer(fake)
    a1 = server.seed("A-1")
    records = [
        {"id": a1, "fields": {"name": "by id", "numberofemployees": 3}},
        {"key": {"accountnumber": "A-1"}, "fields": {"name": "by key"}},
    ]
    report = write_entities(conn, "account", "update", records)
    assert [(r.status, r.id, r.merged_into) for r in report.results] == [("updated", a1, 1), ("updated", a1, None)]
    [update] = server.writes
    [target] = json.loads(update.content)["Targets"]
    assert target == {
        "@odata.type": "Microsoft.Dynamics.CRM.account",
        "accountid": a1,
        "name": "by key",
        "numberofemployees": 3,
    }


def test_through_the_runtime_each_record_is_checked_once(
    runtime: Runtime, fake: FakeDataverse, conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Phase two's verdict (validate hook) is handed to the write (execute hook): 20,000 records are not checked
    twice. A library call checks its records itself, and a verdict on another list is not reused."""
    BulkServer(fake)
    checked: list[int] = []
    real = bulk._checked_all

    def counting(p: Any, meta: Any, mode: str, records: Any) -> Any:
        checked.append(len(records))
        return real(p, meta, mode, records)

    monkeypatch.setattr(bulk, "_checked_all", counting)
    records = [{"fields": {"name": f"n{i}"}} for i in range(4)]
    out = runtime.run_action("write_entities", {"table": "account", "mode": "create", "records": records}, conn)
    assert (out["summary"]["created"], checked) == (4, [4])
    verdict = bulk.check_records(conn, "account", "create", records[:2])
    write_entities(conn, "account", "create", records[2:], checked=verdict)
    assert checked == [4, 2, 2]  # the verdict was on other records: the write checked its own


def test_a_list_write_keeps_the_live_heap_out_of_full_collections_while_it_runs(fake: FakeDataverse) -> None:
    """The objects alive when the write starts (the caller's records among them) are frozen while it runs, so the
    collector's full passes do not walk them with every thread stopped, and handed back when it ends."""
    import gc

    server = BulkServer(fake)
    records = [{"key": {"accountnumber": f"F-{i}"}, "fields": {"name": f"n{i}"}} for i in range(50)]
    seen: list[int] = []
    server.before_write.append(lambda: seen.append(gc.get_freeze_count()))
    before = gc.get_freeze_count()
    with fake.connect() as conn:
        report = write_entities(conn, "account", "upsert", records)
    assert report.summary()["created"] == 50
    assert seen and seen[0] > before  # the records (and everything alive then) were frozen during the write
    assert gc.get_freeze_count() == before
