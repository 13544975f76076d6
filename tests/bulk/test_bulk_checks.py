"""Phase two of a bulk write judges which key a record's columns form once per column set (and the values record by
record): a bad record after many good ones of the same shape is still refused, naming its own path, before any
request is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from connector import bulk
from connector.connection import Connection
from connector.errors import InputError
from connector.hookspecs import hookimpl
from connector.runtime import Runtime
from tests.framework.packs import make_pack
from tests.records.conftest import FakeDataverse, table_body

MAX_LENGTH = 20


class KeyedDataverse(FakeDataverse):
    """account with a MaxLength on accountnumber and a second key whose index is still being built."""

    def __init__(self) -> None:
        super().__init__()
        self.extra_keys: list[dict[str, Any]] = [
            {"SchemaName": "postcode", "KeyAttributes": ["address1_postalcode"], "EntityKeyIndexStatus": "Pending"}
        ]

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = unquote(request.url.path)
        if path.endswith("EntityDefinitions(LogicalName='account')"):
            self.requests.append(request)
            body = table_body("account")
            body["Keys"] += self.extra_keys
            return httpx.Response(200, json=body)
        if path.endswith("/Microsoft.Dynamics.CRM.StringAttributeMetadata"):
            self.requests.append(request)
            return httpx.Response(200, json={"value": [{"LogicalName": "accountnumber", "MaxLength": MAX_LENGTH}]})
        return super().handler(request)


@pytest.fixture
def keyed() -> KeyedDataverse:
    return KeyedDataverse()


@pytest.fixture
def keyed_conn(keyed: KeyedDataverse) -> Connection:
    return keyed.connect()


def good(n: int) -> list[dict[str, Any]]:
    return [{"key": {"accountnumber": f"A-{i}"}, "fields": {"name": f"n{i}"}} for i in range(n)]


@pytest.mark.parametrize(
    ("key", "path", "message"),
    [
        ({"acountnumber": "A-x"}, "$.records[1500].key.acountnumber", "unknown column 'acountnumber'"),
        ({"address1_postalcode": "98052"}, "$.records[1500].key", "the alternate key 'postcode' is Pending"),
        ({"numberofemployees": 5}, "$.records[1500].key.numberofemployees", "not part of any alternate key"),
        ({"name": "n"}, "$.records[1500].key", "no alternate key of 'account' is made of exactly these columns"),
    ],
)
def test_a_bad_key_after_many_good_ones_of_one_shape_refuses_the_run(
    runtime: Runtime, keyed: KeyedDataverse, keyed_conn: Connection, key: dict[str, Any], path: str, message: str
) -> None:
    records = good(2000)
    records[1500] = {"key": key, "fields": {"industrycode": 1}}
    inputs = {"table": "account", "mode": "upsert", "records": records}
    with pytest.raises(InputError) as caught:
        runtime.run_action("write_entities", inputs, keyed_conn)
    assert [(p.path, message in p.message) for p in caught.value.problems] == [(path, True)]
    assert keyed.data == []  # metadata reads only


def test_a_key_value_over_max_length_after_many_good_ones_fails_that_record_alone(keyed_conn: Connection) -> None:
    records = good(2000)
    records[1500] = {"key": {"accountnumber": "A" * (MAX_LENGTH + 1)}, "fields": {"name": "long"}}
    verdict = bulk.check_records(keyed_conn, "account", "upsert", records)
    assert verdict.problems == []  # a value that cannot be sent fails its record, not the run
    assert list(verdict.refused) == [1500]
    refusal = verdict.refused[1500]
    assert refusal.status == "failed" and refusal.message is not None
    assert refusal.message.startswith(
        f"not sent: $.records[1500].key.accountnumber: 'accountnumber' holds at most {MAX_LENGTH}"
    )
    assert len(verdict.bodies) == 1999


def test_a_key_of_one_table_is_not_taken_for_the_same_columns_of_another(keyed_conn: Connection) -> None:
    """The remembered keys are per table: a lookup by key to contact with a column named like an account key column
    is judged against contact."""
    records = good(3)
    records[2]["fields"]["primarycontactid"] = {"table": "contact", "key": {"accountnumber": "A-1"}}
    verdict = bulk.check_records(keyed_conn, "account", "upsert", records)
    assert [p.path for p in verdict.problems] == ["$.records[2].fields.primarycontactid.key.accountnumber"]


def test_a_key_created_after_the_metadata_was_read_is_found_for_every_record(
    keyed: KeyedDataverse, keyed_conn: Connection
) -> None:
    """The one fresh read of a validation is the one every later record is judged by: the key found fresh for the
    first record is not missed again for the second."""
    keyed.extra_keys = []
    keyed_conn.metadata.table("account")  # cached without the key
    keyed.extra_keys = [{"SchemaName": "postcode", "KeyAttributes": ["address1_postalcode"]}]  # created meanwhile
    records = [{"key": {"address1_postalcode": f"9805{i}"}, "fields": {"name": f"n{i}"}} for i in range(3)]
    verdict = bulk.check_records(keyed_conn, "account", "upsert", records)
    assert (verdict.problems, sorted(verdict.bodies)) == ([], [0, 1, 2])
    assert len([r for r in keyed.metadata_reads if "Consistency" in r.headers]) == 1  # one fresh read, not one each


def test_records_reach_the_builtin_hooks_as_given_and_a_packs_hook_a_copy(
    runtime: Runtime, keyed_conn: Connection, tmp_path: Path
) -> None:
    """The runtime copies the inputs so no hook changes the caller's data; the records of a bulk write, seen by the
    built-in hooks alone (which never change them), are handed on as given. Once a pack's hook sees them, they are
    copied again: its change to a record stays out of the caller's list."""
    records = good(3)
    inputs = {"table": "account", "mode": "upsert", "records": records, "bypass_business_logic": ["CustomSync"]}
    frozen = runtime.check_inputs("write_entities", inputs, keyed_conn)
    assert frozen["records"] is records
    assert (
        frozen["bypass_business_logic"] == ["CustomSync"]
        and frozen["bypass_business_logic"] is not inputs["bypass_business_logic"]
    )
    code = """
    @hookimpl(wrapper=True)
    def validate_inputs(action_id, inputs, connection):
        inputs["records"][0]["fields"]["name"] = "changed by a pack"
        return (yield)
    """
    meddler = Runtime(load_entrypoints=False, extra_packs=[make_pack(tmp_path, name="meddler", code=code)])
    frozen = meddler.check_inputs("write_entities", inputs, keyed_conn)
    assert frozen["records"] is not records and frozen["records"][0]["fields"]["name"] == "changed by a pack"
    assert records == good(3)

    class Late:
        """A hook registered after the runtime was built: its inputs are copied all the same."""

        @hookimpl(wrapper=True)
        def validate_inputs(self, action_id: str, inputs: Any, connection: Any) -> Any:
            inputs["records"][1]["fields"]["name"] = "changed late"
            return (yield)

    late = Runtime(load_entrypoints=False)
    assert late.check_inputs("write_entities", inputs, keyed_conn)["records"] is records
    late.pm.register(Late(), name="late")
    frozen = late.check_inputs("write_entities", inputs, keyed_conn)
    assert frozen["records"][1]["fields"]["name"] == "changed late" and records == good(3)
