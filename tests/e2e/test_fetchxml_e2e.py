"""``run_fetch_xml_query`` against the emulator's FetchXML: beyond 50,000 rows by cookie, aggregates, --jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.etree.ElementTree import Element, fromstring

import pytest

from connector.connection import Connection
from connector.errors import InputError
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle
from tests.e2e.conftest import web_api_requests

ROWS = 50_500
FETCH = "<fetch><entity name='account'><attribute name='name'/><order attribute='name'/></entity></fetch>"


def d365(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )


def sent_fetches(emulator: EmulatorHandle) -> list[Element]:
    out = []
    for r in web_api_requests(emulator):
        if r["path"].endswith("/accounts") and r["method"] == "GET":
            query = parse_qs(urlsplit("?" + str(r.get("query", ""))).query)
            if "fetchXml" in query:
                out.append(fromstring(query["fetchXml"][0]))
    return out


def test_run_fetch_xml_query_fetch_all_beyond_50000_rows(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle, connection_file: Path
) -> None:
    fresh_emulator.admin.seed("account", [{"name": f"N{i:06d}"} for i in range(ROWS)])
    fresh_emulator.admin.clear_requests()
    out = runtime.run_action(
        "run_fetch_xml_query", {"fetch_xml": FETCH, "fetch_all": True, "max_records": 100_000}, connection
    )
    assert out["returned"] == ROWS and out["more_records"] is False and out["next_page_token"] is None
    names = [r["name"] for r in out["records"]]
    assert names == [f"N{i:06d}" for i in range(ROWS)]  # every row once, in order: no page lost or repeated
    fetches = sent_fetches(fresh_emulator)
    # pages after the first carry the cookie of the one before (simple paging would stop at 50,000)
    assert [f.get("page") for f in fetches] == [str(n) for n in range(1, 12)]
    assert all(f.get("paging-cookie") for f in fetches[1:])
    done = d365(
        "run",
        "run_fetch_xml_query",
        "--connection",
        str(connection_file),
        "--jsonl",
        "--set",
        f"fetch_xml={FETCH}",
        "--set",
        "fetch_all:=true",
        "--set",
        "max_records:=60000",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == ROWS and json.loads(lines[-1])["name"] == f"N{ROWS - 1:06d}"
    assert json.loads(done.stderr.strip().splitlines()[-1])["more_records"] is False


def test_run_fetch_xml_query_page_token_and_aggregate(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    fresh_emulator.admin.seed("account", [{"name": f"N{i:03d}", "numberofemployees": i} for i in range(30)])
    first = runtime.run_action("run_fetch_xml_query", {"fetch_xml": FETCH, "page_size": 8}, connection)
    assert [r["name"] for r in first["records"]] == [f"N{i:03d}" for i in range(8)] and first["more_records"]
    second = runtime.run_action(
        "run_fetch_xml_query", {"fetch_xml": FETCH, "page_size": 8, "page_token": first["next_page_token"]}, connection
    )
    assert [r["name"] for r in second["records"]] == [f"N{i:03d}" for i in range(8, 16)]
    aggregate = (
        "<fetch aggregate='true'><entity name='account'><attribute name='accountid' alias='rows' aggregate='count'/>"
        "<attribute name='numberofemployees' alias='staff' aggregate='sum'/></entity></fetch>"
    )
    out = runtime.run_action("run_fetch_xml_query", {"fetch_xml": aggregate}, connection)
    assert out["records"] == [{"rows": 30, "staff": sum(range(30))}]


def test_run_fetch_xml_query_long_query_goes_inside_batch(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    fresh_emulator.admin.seed("account", [{"name": f"N{i:04d}"} for i in range(500)])
    conditions = "".join(f"<condition attribute='name' operator='eq' value='N{i:04d}'/>" for i in range(0, 1000, 2))
    long = f"<fetch><entity name='account'><attribute name='name'/><filter type='or'>{conditions}</filter>"
    long += "</entity></fetch>"  # about 44,000 characters once URL-encoded: over the 32,768 a GET URL may have
    fresh_emulator.admin.clear_requests()
    out = runtime.run_action(
        "run_fetch_xml_query", {"fetch_xml": long, "fetch_all": True, "max_records": 1000}, connection
    )
    assert out["returned"] == 250
    assert [r["path"].rsplit("/", 1)[-1] for r in web_api_requests(fresh_emulator) if r["method"] == "POST"] == [
        "$batch"
    ]


@pytest.mark.parametrize(
    "fetch_xml",
    [
        pytest.param("<fetch><entity name='account'><attribute name='name'></entity></fetch>", id="malformed"),
        pytest.param(
            '<!DOCTYPE fetch [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
            "<fetch><entity name='account'><attribute name='name'/></entity></fetch>",
            id="doctype-entity",
        ),
    ],
)
def test_run_fetch_xml_query_refused_with_exit_2_before_any_request(
    fetch_xml: str, connection_file: Path, fresh_emulator: EmulatorHandle, runtime: Runtime, connection: Connection
) -> None:
    fresh_emulator.admin.clear_requests()
    with pytest.raises(InputError):
        runtime.run_action("run_fetch_xml_query", {"fetch_xml": fetch_xml}, connection)
    done = d365("run", "run_fetch_xml_query", "--connection", str(connection_file), "--set", f"fetch_xml={fetch_xml}")
    assert done.returncode == 2, done.stderr
    assert not [r for r in web_api_requests(fresh_emulator) if "fetchXml" in str(r.get("query", ""))]
