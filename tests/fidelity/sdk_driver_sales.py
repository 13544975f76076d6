"""Sales and marketing scenarios with Microsoft's official Dataverse SDK (runs inside ``.venv-fidelity``):

    .venv-fidelity/bin/python tests/fidelity/sdk_driver_sales.py SCENARIO --base-url URL --connection FILE --tag TAG

Same contract as ``sdk_driver.py`` (whose credential it reuses): one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from PowerPlatform.Dataverse.client import DataverseClient
from sdk_driver import ConnectionFileCredential


def scenario_lead_changeset(client: DataverseClient, tag: str) -> dict[str, Any]:
    """One change set: a lead, an account and a contact that name it as their originating lead, and a task regarding
    the account (polymorphic ``regardingobjectid_account_task``)."""
    batch = client.batch.new()
    with batch.changeset() as cs:
        lead = cs.records.create("lead", {"lastname": f"{tag}-lead", "subject": f"{tag} engines"})
        account = cs.records.create("account", {"name": f"{tag}-account", "originatingleadid@odata.bind": lead})
        cs.records.create("contact", {"lastname": f"{tag}-contact", "originatingleadid@odata.bind": lead})
        cs.records.create("task", {"subject": f"{tag}-task", "regardingobjectid_account_task@odata.bind": account})
    result = batch.execute()
    leads = client.records.list("lead", filter=f"lastname eq '{tag}-lead'", select=["leadid", "subject"])
    lead_id = [r["leadid"] for r in leads]
    accounts = client.records.list(
        "account", filter=f"name eq '{tag}-account'", select=["accountid", "_originatingleadid_value"]
    )
    contacts = client.records.list(
        "contact", filter=f"lastname eq '{tag}-contact'", select=["_originatingleadid_value"]
    )
    tasks = client.records.list("task", filter=f"subject eq '{tag}-task'", select=["_regardingobjectid_value"])
    return {
        "statuses": [r.status_code for r in result.responses],
        "leads": len(lead_id),
        "account_linked": [r["_originatingleadid_value"] for r in accounts] == lead_id,
        "contact_linked": [r["_originatingleadid_value"] for r in contacts] == lead_id,
        "task_regarding_account": [r["_regardingobjectid_value"] for r in tasks] == [r["accountid"] for r in accounts],
    }


def scenario_sample_data(client: DataverseClient, tag: str) -> dict[str, Any]:
    """What ``--sample-data`` serves, read through the SDK: the README's accounts and contact, and the list."""
    fixed = client.records.list(
        "account",
        filter="accountnumber eq 'A-1001' or accountnumber eq 'A-1002'",
        select=["name", "accountnumber"],
        orderby=["accountnumber"],
    )
    ada = client.records.list("contact", filter="emailaddress1 eq 'ada@example.com'", select=["fullname"])
    lists = client.records.list("list", select=["listname", "membercount"])
    return {
        "accounts": [[r["accountnumber"], r["name"]] for r in fixed],
        "ada": [r["fullname"] for r in ada],
        "lists": [[r["listname"], r["membercount"]] for r in lists],
    }


SCENARIOS: dict[str, Callable[[DataverseClient, str], dict[str, Any]]] = {
    "lead_changeset": scenario_lead_changeset,
    "sample_data": scenario_sample_data,
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
