"""Parsing RemoteExecutionContext into the flat event, on Microsoft's example and on generated contexts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.webhook_delivery import SIZE_EXCEEDED_HEADER, parse_context, parse_date, plain
from tests.webhooks.conftest import delivery, payload

RID = "6d81597f-0f9f-e711-8122-000d3aa2331c"
USER = "75c2dd85-e89e-e711-8122-000d3aa2331c"
CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"


def test_webhook_documented_update_example_flattens(handle: Callable[..., Any]) -> None:
    event = handle(delivery(payload("use-webhooks-update-contact.json")))
    assert event is not None
    assert event["message"] == "Update" and event["table"] == "contact" and event["record_id"] == RID
    assert event["changed_attributes"] == {
        "firstname": "James",
        "contactid": RID,
        "fullname": "James Glynn (sample)",
        "yomifullname": "James Glynn (sample)",
        "modifiedon": "2017-09-26T00:04:07.000Z",
        "modifiedby": {"table": "systemuser", "id": USER, "name": None},
        "modifiedonbehalfby": None,
    }
    assert event["pre_images"] == {}
    assert event["post_images"] == {
        "AsynchronousStepPrimaryName": {"fullname": "James Glynn (sample)", "contactid": RID}
    }
    assert event["step_id"] == "75417616-4ea2-e711-8122-000d3aa2331c"
    assert event["operation_id"] == "4af10637-4ea2-e711-8122-000d3aa2331c"
    assert event["correlation_id"] == "b374239d-4233-41a9-8b17-a86cb4f737b5"
    assert (event["user_id"], event["initiating_user_id"]) == (USER, USER)
    assert (
        event["organization_name"] == "OrgName" and event["organization_id"] == "4ef5b371-e89e-e711-8122-000d3aa2331c"
    )
    assert (event["depth"], event["stage"], event["mode"]) == (1, 40, "asynchronous")
    # /Date(1506409448000-0700)/: the milliseconds are UTC; the offset does not move the instant
    assert event["time"] == "2017-09-26T07:04:08.000Z"
    assert event["size_exceeded"] is False and event["reread"] is None
    assert event["raw"]["ParentContext"]["Stage"] == 30


def test_webhook_documented_delete_target_is_a_reference(handle: Callable[..., Any]) -> None:
    event = handle(delivery(payload("delete-contact.json")))
    assert event is not None
    assert event["message"] == "Delete" and event["record_id"] == RID
    assert event["changed_attributes"] == {}
    assert event["pre_images"] == {"PreImage": {"fullname": "James Glynn (sample)", "contactid": RID}}
    assert event["post_images"] == {}


def test_webhook_create_plain_values(handle: Callable[..., Any]) -> None:
    event = handle(delivery(payload("create-contact.json")))
    assert event is not None
    changed = event["changed_attributes"]
    assert changed["gendercode"] == 1
    assert changed["annualincome"] == 52000.5
    assert changed["birthdate"] == "1980-01-01T00:00:00.000Z"
    assert changed["parentcustomerid"] == {
        "table": "account",
        "id": "e2b9dd85-e89e-e711-8122-000d3aa2331d",
        "name": "Fabrikam",
    }
    assert event["record_id"] == RID


def test_webhook_aliased_and_collection_values() -> None:
    aliased = {
        "__type": f"AliasedValue:{CONTRACTS}",
        "AttributeLogicalName": "name",
        "EntityLogicalName": "account",
        "NeedFormatting": True,
        "ReturnType": 14,
        "Value": "Fabrikam",
    }
    assert plain(aliased) == "Fabrikam"
    options = {"__type": f"OptionSetValueCollection:{CONTRACTS}", "Value": None}
    assert plain(options) is None
    assert plain(
        [{"__type": f"OptionSetValue:{CONTRACTS}", "Value": 3}, {"__type": f"OptionSetValue:{CONTRACTS}", "Value": 5}]
    ) == [3, 5]
    collection = {
        "__type": f"EntityCollection:{CONTRACTS}",
        "Entities": [{"Attributes": [{"key": "name", "value": "A"}], "Id": RID, "LogicalName": "account"}],
    }
    assert plain(collection) == [{"name": "A"}]
    assert parse_date("/Date(0)/") == "1970-01-01T00:00:00.000Z"
    assert parse_date("/Date(-1000+0100)/") == "1969-12-31T23:59:59.000Z"
    assert parse_date("Date(0)") is None


def test_webhook_oversized_delivery_marks_changes_unknown(handle: Callable[..., Any]) -> None:
    context = payload("use-webhooks-update-contact.json")
    for dropped in ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages"):
        del context[dropped]
    event = handle(delivery(context, headers={SIZE_EXCEEDED_HEADER: "true"}))
    assert event is not None
    assert event["size_exceeded"] is True
    assert event["changed_attributes"] is None, "unknown, not empty"
    assert event["pre_images"] is None and event["post_images"] is None
    assert event["reread"] == {"table": "contact", "id": RID}


def _entity(table: str, rid: str, attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "__type": f"Entity:{CONTRACTS}",
        "Attributes": [{"key": k, "value": v} for k, v in attrs.items()],
        "EntityState": None,
        "FormattedValues": [],
        "Id": rid,
        "KeyAttributes": [],
        "LogicalName": table,
        "RelatedEntities": [],
        "RowVersion": None,
    }


names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
guids = st.uuids().map(str)
wcf_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31 - 1),
    st.text(max_size=30).filter(lambda s: not s.startswith("/Date(")),
    st.integers(-(10**12), 10**13).map(lambda ms: f"/Date({ms})/"),
    st.integers(0, 100000).map(lambda v: {"__type": f"OptionSetValue:{CONTRACTS}", "Value": v}),
    st.floats(-1e9, 1e9, allow_nan=False).map(lambda v: {"__type": f"Money:{CONTRACTS}", "Value": v}),
    st.tuples(names, guids).map(
        lambda t: {
            "__type": f"EntityReference:{CONTRACTS}",
            "Id": t[1],
            "KeyAttributes": [],
            "LogicalName": t[0],
            "Name": None,
            "RowVersion": None,
        }
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    message=st.sampled_from(["Create", "Update"]),
    rid=guids,
    attrs=st.dictionaries(names, wcf_values, max_size=8),
    mode=st.sampled_from([0, 1]),
    created_ms=st.integers(0, 4 * 10**12),
)
def test_webhook_generated_contexts(message: str, rid: str, attrs: dict[str, Any], mode: int, created_ms: int) -> None:
    context = {
        "MessageName": message,
        "PrimaryEntityName": "contact",
        "PrimaryEntityId": rid,
        "Mode": mode,
        "Stage": 40,
        "Depth": 1,
        "UserId": USER,
        "InitiatingUserId": USER,
        "OperationId": rid,
        "CorrelationId": rid,
        "OperationCreatedOn": f"/Date({created_ms})/",
        "InputParameters": [{"key": "Target", "value": _entity("contact", rid, attrs)}],
        "OutputParameters": [{"key": "id", "value": rid}] if message == "Create" else [],
        "PreEntityImages": [],
        "PostEntityImages": [],
        "OwningExtension": {"Id": USER, "LogicalName": "sdkmessageprocessingstep"},
    }
    # through the JSON text Dataverse sends (WCF escapes every slash)
    text = json.dumps(context).replace("/", "\\/")
    event = parse_context(json.loads(text))
    assert set(event["changed_attributes"]) == set(attrs)
    for name, value in attrs.items():
        got = event["changed_attributes"][name]
        if isinstance(value, dict) and "Value" in value:
            assert got == value["Value"]
        elif isinstance(value, dict):
            assert got == {"table": value["LogicalName"], "id": value["Id"].lower(), "name": None}
        elif isinstance(value, str) and value.startswith("/Date("):
            assert got.endswith("Z") and got[:4].isdigit()
        else:
            assert got == value
    assert event["record_id"] == rid.lower()
    assert event["mode"] == ("synchronous", "asynchronous")[mode]
    assert event["dedupe_key"] == f"{rid.lower()}|{USER}|{message}|{rid.lower()}"
