"""An example pack: ``ensure_account`` finds an account by name, or creates it, through the built-in actions.

It runs the built-ins through ``context.run_action`` rather than calling the library, so the runtime still validates
their inputs, applies every wrapper and records each run; the pack itself holds no Dataverse code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector.context import ActionContext
from connector.hookspecs import hookimpl


@hookimpl
def ensure_account(inputs: Mapping[str, Any], connection: Any, context: ActionContext) -> dict[str, Any]:
    name = inputs["name"]
    where = [{"column": "name", "operator": "eq", "value": name}]
    found = context.run_action("query_entities", {"table": "account", "select": ["name"], "where": where, "top": 1})
    if found["records"]:
        return {"id": found["records"][0]["accountid"], "created": False}
    context.log.info("no account named %r: creating it", name)
    fields = {"name": name}
    created = context.run_action("create_entity", {"table": "account", "fields": fields, "return_record": False})
    return {"id": created["id"], "created": True}
