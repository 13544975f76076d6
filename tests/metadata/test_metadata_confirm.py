"""Metadata creates whose answer was lost or refused as "already exists" are checked by reading the definition back.

A dropped connection after a key's POST is an unknown outcome; a read that finds the key with the requested columns
makes it a success (``confirmed_by_read``). A rerun meets "already exists": the same definition is
``already_present`` (exit 0), another definition is a failure that names the difference.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connector.connection import Connection
from connector.errors import FatalApiError, InputError, OutcomeUnknownError
from connector.runtime import Runtime
from dataverse_emulator.testing import running_emulator
from tests.metadata.test_metadata_actions import ATTR_ID, BANK, KEY_ID, _key

EXISTS = {"error": {"code": "0x80047013", "message": "An entity key with the specified name already exists."}}
KEY_INPUTS = {"table": "new_bankaccount", "schema_name": "new_code_region_key", "columns": ["new_code", "new_region"]}


def dropped(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)


def keys(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"value": list(rows)}


def test_a_key_whose_answer_was_lost_is_confirmed_by_reading_it(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route("POST", f"{BANK}/Keys", dropped)
    fake.route("GET", f"{BANK}/Keys({KEY_ID})", httpx.Response(200, json=_key("Active")))
    fake.route("GET", f"{BANK}/Keys", keys(_key("Pending")))
    out = runtime.run_action("create_alternate_key", KEY_INPUTS, conn)
    assert (out["outcome"], out["confirmed_by_read"], out["key"]["status"]) == ("created", True, "Active")
    assert len(fake.sent("POST")) == 1  # confirmed, never sent twice


def test_a_key_whose_answer_was_lost_and_that_is_not_there_stays_unknown(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    fake.route("POST", f"{BANK}/Keys", dropped)
    fake.route("GET", f"{BANK}/Keys", keys())
    with pytest.raises(OutcomeUnknownError):
        runtime.run_action("create_alternate_key", KEY_INPUTS, conn)


def test_a_rerun_of_a_key_create_reports_it_already_present(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route("POST", f"{BANK}/Keys", httpx.Response(400, json=EXISTS))
    fake.route("GET", f"{BANK}/Keys({KEY_ID})", httpx.Response(200, json=_key("Active")))
    fake.route("GET", f"{BANK}/Keys", keys(_key("Active")))
    out = runtime.run_action("create_alternate_key", KEY_INPUTS, conn)
    assert (out["outcome"], out["confirmed_by_read"], out["active"]) == ("already_present", True, True)


def test_a_key_that_exists_with_other_columns_fails_naming_them(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route("POST", f"{BANK}/Keys", httpx.Response(400, json=EXISTS))
    fake.route("GET", f"{BANK}/Keys", keys({**_key("Active"), "KeyAttributes": ["new_code"]}))
    with pytest.raises(FatalApiError, match=r"exists with columns \['new_code'\], not \['new_code', 'new_region'\]"):
        runtime.run_action("create_alternate_key", KEY_INPUTS, conn)


@pytest.mark.parametrize(("stored", "confirmed"), [("Money", True), ("String", False)])
def test_a_column_whose_answer_was_lost_is_confirmed_by_its_type(
    runtime: Runtime, fake: Any, conn: Connection, stored: str, confirmed: bool
) -> None:
    fake.route("POST", f"{BANK}/Attributes", dropped)
    found = {"LogicalName": "new_balance", "AttributeType": stored, "MetadataId": ATTR_ID}
    fake.route("GET", f"{BANK}/Attributes(LogicalName='new_balance')", found)
    inputs = {"table": "new_bankaccount", "attribute": {"type": "money", "schema_name": "new_Balance", "label": "B"}}
    if not confirmed:
        with pytest.raises(FatalApiError, match="the column exists as String, not Money"):
            runtime.run_action("create_attribute", inputs, conn)
        return
    out = runtime.run_action("create_attribute", inputs, conn)
    assert (out["metadata_id"], out["outcome"], out["confirmed_by_read"]) == (ATTR_ID, "created", True)


def test_a_rerun_of_create_alternate_key_on_the_emulator_exits_0_already_present(runtime: Runtime) -> None:
    inputs = {"table": "account", "schema_name": "new_acc_number", "columns": ["accountnumber"]}
    with running_emulator(key_activation_s=0) as emulator, Connection.from_config(emulator.connection_config()) as c:
        first = runtime.run_action("create_alternate_key", inputs, c)
        again = runtime.run_action("create_alternate_key", inputs, c)
        with pytest.raises(InputError, match=r"already exists with columns \['accountnumber'\], not \['name'\]"):
            runtime.run_action("create_alternate_key", {**inputs, "columns": ["name"]}, c)
    assert (first["outcome"], first["confirmed_by_read"]) == ("created", False)
    assert (again["outcome"], again["confirmed_by_read"]) == ("already_present", True)
    assert again["key"]["metadata_id"] == first["key"]["metadata_id"]
