"""Microsoft's official Python SDK (powerplatform-dataverse-client, in .venv-fidelity) against the emulator over TLS.

Each test runs one scenario of ``sdk_driver.py`` in a subprocess and checks its JSON result exactly.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from typing import Any

import pytest

from .conftest import FIDELITY_PYTHON, REPO, ServedEmulator, sdk_env

DRIVER = REPO / "tests" / "fidelity" / "sdk_driver.py"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def run_sdk(served: ServedEmulator, scenario: str) -> tuple[str, dict[str, Any]]:
    if not FIDELITY_PYTHON.exists():
        pytest.fail(
            f"{FIDELITY_PYTHON} is missing: run `make fidelity-venv` to install Microsoft's SDK for these tests"
        )
    # letters only, none of "e", "t" or digits, so the wildcard and contains() scenarios match nothing in the tag itself
    tag = "fid" + "".join("kmpqxzwv"[int(c, 16) % 8] for c in uuid.uuid4().hex[:8])
    proc = subprocess.run(
        [
            str(FIDELITY_PYTHON),
            str(DRIVER),
            scenario,
            "--base-url",
            served.base_url,
            "--connection",
            str(served.connection_file),
            "--tag",
            tag,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=sdk_env(served.ca_file),
        cwd=REPO,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"SDK scenario {scenario!r} failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}\n{served.logs()}"
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("token_requests") >= 1  # the token really came from the emulator's token endpoint
    return tag, result


def test_create_and_retrieve(served_emulator: ServedEmulator) -> None:
    tag, result = run_sdk(served_emulator, "create_retrieve")
    assert GUID.match(result["id"])
    assert result == {
        "id": result["id"],
        "record_id": result["id"],
        "data": {"accountid": result["id"], "name": f"{tag} Contoso", "numberofemployees": 42},
        "etag_present": True,
        "missing": True,
    }


def test_update(served_emulator: ServedEmulator) -> None:
    tag, result = run_sdk(served_emulator, "update")
    assert result == {"name": f"{tag} after", "telephone1": "555-0100"}


def test_delete(served_emulator: ServedEmulator) -> None:
    _, result = run_sdk(served_emulator, "delete")
    assert result == {"existed": True, "after": True, "second_delete": {"type": "HttpError", "status": 404}}


def test_tables_alternate_key_creation(served_emulator: ServedEmulator) -> None:
    _, result = run_sdk(served_emulator, "alternate_key")
    assert result["created"] == {
        "schema_name": "fid_contact_name_key",
        "key_attributes": ["firstname", "lastname"],
        "status": "Pending",
        "metadata_id_present": True,
    }
    assert "fid_contact_name_key" in result["listed"]
    assert result["statuses"][-1] == "Active"
    assert set(result["statuses"]) <= {"Pending", "InProgress", "Active"}
    assert result["final"] == [
        {"schema_name": "fid_contact_name_key", "key_attributes": ["firstname", "lastname"], "status": "Active"}
    ]
    assert result["same_id"] is True


def test_upsert_by_alternate_key(served_emulator: ServedEmulator) -> None:
    tag, result = run_sdk(served_emulator, "upsert")
    assert result["key_statuses"][-1] == "Active"
    assert result["after_create"] == [{"name": f"{tag} first", "accountnumber": f"{tag}-A1"}]
    assert result["after_update"] == [{"name": f"{tag} second", "accountnumber": f"{tag}-A1"}]
    assert result["same_id"] is True
    assert result["quoted_key"] == ["quoted"]


def test_list_with_paging(served_emulator: ServedEmulator) -> None:
    tag, result = run_sdk(served_emulator, "list_paging")
    names = [f"{tag}-page-{i}" for i in range(5)]
    assert result == {
        "pages": [names[0:2], names[2:4], names[4:5]],
        "all_desc": list(reversed(names)),
        "top": names[:3],
        # $top is ignored when odata.maxpagesize is also sent (reference 15.7)
        "top_with_page_size": names,
    }


def test_query_builder_filters(served_emulator: ServedEmulator) -> None:
    tag, result = run_sdk(served_emulator, "query_builder")
    alpha, beta, gamma, off = (f"{tag}-qb-{n}" for n in ("alpha", "beta", "gamma", "50%_off"))
    assert result == {
        "ge": [off, beta, gamma],
        "eq_or": [alpha, gamma],
        "in": [off, alpha],
        "not_in": [beta, gamma],
        "between": [beta, gamma],
        "contains": [beta],
        "endswith": [alpha],
        "like": [gamma],
        "literal_percent": [off],
        "wildcard_underscore": [beta],
        "bracket_escape": [off],
        "is_null": [off, beta],
        "is_not_null": [gamma, alpha],
        "not": [off, alpha, gamma],
        "top": [off, alpha],
        "pages": [[alpha, beta, gamma], [off]],
    }


def test_fetchxml_paging_across_pages(served_emulator: ServedEmulator) -> None:
    tag, result = run_sdk(served_emulator, "fetchxml_paging")
    names = [f"{tag}-fx-{i}" for i in range(7)]
    # three requests: the SDK follows the double URL-encoded paging cookie until morerecords is absent
    assert result == {"pages": [names[0:3], names[3:6], names[6:7]], "sum": [21]}


def test_tables_create_add_column_get_list_alternate_key(served_emulator: ServedEmulator) -> None:
    tag, result = run_sdk(served_emulator, "tables")
    logical = f"new_{tag}gadget"
    assert result == {
        "created": [logical, logical + "s", ["new_Notes", "new_Price"]],
        "added": ["new_Weight", "new_Code"],
        "got": [f"new_{tag}Gadget", logical, logical + "s"],
        "listed": True,
        "key": [f"new_{tag}_code_key", ["new_code"]],
        "record": {"new_name": "G1", "new_price": 9.5, "new_weight": 3, "new_code": "C1"},
    }


def test_schema_lifecycle_leaves_the_organization_as_before(served_emulator: ServedEmulator) -> None:
    _, result = run_sdk(served_emulator, "schema_lifecycle")
    assert result == {
        "bound": True,
        "refused": [400, "0x8004F01F"],  # the book's lookup depends on the shelf table
        "cascaded": ["ok", True],  # the parental lookup took the book with its shelf: the SDK answers a 404 with None
        "removed": ["new_Width"],
        "width_gone": True,
        "restored": True,
    }


def test_file_upload_small_and_chunked(served_emulator: ServedEmulator) -> None:
    # the SDK creates the missing file column through the metadata API, then uploads (single PATCH, then chunked)
    _, result = run_sdk(served_emulator, "file_upload")
    assert result == {"small": True, "chunk": True}


def test_bulk_create_update_upsert_multiple(served_emulator: ServedEmulator) -> None:
    tag, result = run_sdk(served_emulator, "bulk")
    assert len(result["ids"]) == 3 and all(GUID.match(i) for i in result["ids"])
    assert result["returned_ids"] == sorted(result["ids"])
    assert result["after_update"] == [{"name": f"{tag}-bulk-{i}", "telephone1": "555-0199"} for i in range(3)]
    assert result["key_statuses"][-1] == "Active"
    assert result["upserted"] == [
        {"emailaddress1": f"{tag}-0@example.com", "subject": f"{tag} first"},
        {"emailaddress1": f"{tag}-1@example.com", "subject": f"{tag} second"},
        {"emailaddress1": f"{tag}-2@example.com", "subject": f"{tag} second"},
    ]
    assert result["kept_ids"] == [True, True, False]  # updated rows keep their id; the third was created


def test_batch_changeset_reference_and_error_modes(served_emulator: ServedEmulator) -> None:
    tag, result = run_sdk(served_emulator, "batch")
    ok = {"entity_id": True, "error_code": None}
    assert result["changeset"] == [
        {"status": 204, "content_id": "1", **ok},
        {"status": 204, "content_id": "2", **ok},
        {"status": 204, "content_id": "3", **ok},
    ]
    assert result["parent"] == [{"name": f"{tag}-batch-parent", "telephone1": "555-0142"}]
    assert result["child_linked"] is True
    failed = {"status": 400, "content_id": None, "entity_id": False, "error_code": "0x80044331"}
    assert result["continue_on_error"] == [
        {"status": 204, "content_id": None, **ok},
        failed,
        {"status": 204, "content_id": None, **ok},
    ]
    assert result["stop_on_error"] == [{"status": 204, "content_id": None, **ok}, failed]
    assert result["names"] == [f"{tag}-coe-1", f"{tag}-coe-2", f"{tag}-stop-1"]
