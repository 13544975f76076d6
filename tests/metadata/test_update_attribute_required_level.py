"""update_attribute leaves the requirement level alone unless it is asked to change it.

The shared ``required_level`` definition used to carry ``default: "none"``; the runtime fills top-level defaults
through ``$ref``, so every update (a new label, a longer max_length) silently made a required column optional.
The default now lives only where a new column is described (the short form of create_attribute).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from connector.connection import Connection
from connector.runtime import Runtime

BANK = "EntityDefinitions(LogicalName='new_bankaccount')"


def test_update_attribute_without_required_keeps_the_requirement_level(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    fake.route(
        "GET",
        f"{BANK}/Attributes(LogicalName='new_code')",
        {
            "@odata.type": "#Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "LogicalName": "new_code",
            "MaxLength": 20,
            "RequiredLevel": {"Value": "ApplicationRequired", "CanBeChanged": True},
        },
    )
    fake.route("PUT", f"{BANK}/Attributes", httpx.Response(204))
    runtime.run_action(
        "update_attribute", {"table": "new_bankaccount", "attribute": "new_code", "max_length": 40}, conn
    )
    sent = json.loads(fake.sent("PUT")[0].content)
    assert sent["MaxLength"] == 40
    assert sent["RequiredLevel"]["Value"] == "ApplicationRequired"
