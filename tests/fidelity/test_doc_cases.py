"""Documented Dataverse behaviours, copied into ``doc_cases/*.json`` with their Microsoft doc path, replayed against the
emulator over a real TLS socket.

Case file format (JSON):

* ``behaviour``: an id listed in ``doc_cases/BEHAVIOURS.txt``; ``doc``: the Microsoft doc source path (and ``ms.date``
  where known); ``doc_quote``: the documented text the case is built from; ``provenance``: DOC, COMMUNITY or
  UNVERIFIED (an UNVERIFIED expectation follows the project's reference where the docs are silent).
* ``steps``: requests run in order. Each has ``method``, ``path`` (relative to the API root) or ``url`` (absolute),
  optional ``query`` (list of ``[name, value]``, encoded by the runner), ``headers``, ``json`` body, ``auth`` (default
  true), ``capture`` (``{"var": "entityid" | "header:Name" | "json:a/b/0"}``), ``poll`` (repeat until a JSON path
  equals a value), and ``expect`` (only the last step must have one; setup steps may carry ``expect_status``).
  Strings may use ``{api}``, ``{org}``, ``{tag}`` (unique per case), ``{guid}`` (random per case), ``{re_api}``
  (``{api}`` escaped for regexes) and captured ``{var}`` values.
* ``expect``: ``status`` (or ``status_in`` where Microsoft does not document it), ``error`` (``code`` exact, or
  ``null`` when the code is not documented; ``message`` exact or ``message_regex``), ``headers`` (name -> regex, must
  be present), ``headers_absent``, ``json_keys`` (the exact set of top-level keys; ``null`` for no body),
  ``value_keys`` (exact set of keys of every item of ``value``), ``value_count``, ``json_equals`` (``/``-separated
  path -> value),
  ``content_type`` (regex), ``text_regex`` (non-JSON bodies).
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from .conftest import ServedEmulator, start_emulator

CASES_DIR = Path(__file__).parent / "doc_cases"
BEHAVIOURS_FILE = CASES_DIR / "BEHAVIOURS.txt"
CASE_FILES = sorted(CASES_DIR.glob("*.json"))
ODATA_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}


def listed_behaviours() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in BEHAVIOURS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ident, _, description = line.partition(" ")
            out[ident] = description.strip()
    return out


def load_case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    return case


@pytest.fixture(scope="module")
def api_client(served_emulator: ServedEmulator) -> Iterator[httpx.Client]:
    conn = served_emulator.connection
    tls = ssl.create_default_context(cafile=str(served_emulator.ca_file))
    with httpx.Client(verify=tls, trust_env=False, timeout=30) as client:
        token = client.post(
            conn["token_url"],
            data={
                "grant_type": "client_credentials",
                "client_id": conn["client_id"],
                "client_secret": conn["client_secret"],
                "scope": f"{served_emulator.base_url}/.default",
            },
        )
        assert token.status_code == 200, token.text
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        # an alternate key on account(accountnumber), shared by the cases that address rows by key
        key = client.post(
            f"{served_emulator.api_url}/EntityDefinitions(LogicalName='account')/Keys",
            headers=ODATA_HEADERS,
            json={
                "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
                "SchemaName": "doccase_accountnumber",
                "DisplayName": {
                    "@odata.type": "Microsoft.Dynamics.CRM.Label",
                    "LocalizedLabels": [
                        {
                            "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel",
                            "Label": "Account number",
                            "LanguageCode": 1033,
                        }
                    ],
                },
                "KeyAttributes": ["accountnumber"],
            },
        )
        assert key.status_code in (200, 201, 204), key.text
        _wait_for_keys(client, served_emulator.api_url)
        yield client


def _wait_for_keys(client: httpx.Client, api: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        keys = client.get(
            f"{api}/EntityDefinitions(LogicalName='account')/Keys?$select=SchemaName,EntityKeyIndexStatus",
            headers=ODATA_HEADERS,
        ).json()["value"]
        if all(k["EntityKeyIndexStatus"] == "Active" for k in keys):
            return
        time.sleep(0.2)
    pytest.fail("the account alternate key never became Active")


class CaseRun:
    def __init__(self, served: ServedEmulator, client: httpx.Client) -> None:
        self.served = served
        self.client = client
        self.vars: dict[str, str] = {
            "api": served.api_url,
            "org": served.base_url,
            "re_api": re.escape(served.api_url),
            "tag": "d" + uuid.uuid4().hex[:8],
            "guid": str(uuid.uuid4()),
        }

    def sub(self, value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(r"\{(\w+)\}", lambda m: self.vars.get(m.group(1), m.group(0)), value)
        if isinstance(value, list):
            return [self.sub(v) for v in value]
        if isinstance(value, dict):
            return {self.sub(k): self.sub(v) for k, v in value.items()}
        return value

    def send(self, step: dict[str, Any]) -> httpx.Response:
        url = self.sub(step["url"]) if "url" in step else f"{self.served.api_url}/{self.sub(step['path'])}"
        if step.get("query"):
            pairs = [(self.sub(k), self.sub(v)) for k, v in step["query"]]
            url += ("&" if "?" in url else "?") + "&".join(
                f"{quote(k, safe='$@')}={quote(v, safe=chr(39) + '(),=$@/:')}" for k, v in pairs
            )
        headers = dict(ODATA_HEADERS)
        headers.update(self.sub(step.get("headers", {})))
        if not step.get("auth", True):
            headers["Authorization"] = ""
        kwargs: dict[str, Any] = {"headers": headers}
        if "json" in step:
            kwargs["json"] = self.sub(step["json"])
        elif "body" in step:  # a raw body, e.g. a multipart/mixed $batch (CRLF line endings kept as written)
            kwargs["content"] = self.sub(step["body"]).encode()
        request = self.client.build_request(step["method"], url, **kwargs)
        if not step.get("auth", True):
            del request.headers["Authorization"]
        return self.client.send(request)

    def capture(self, step: dict[str, Any], response: httpx.Response) -> None:
        for var, source in step.get("capture", {}).items():
            if source == "entityid":
                m = re.search(r"\(([0-9a-fA-F-]{36})\)$", response.headers.get("OData-EntityId", ""))
                assert m, f"no GUID in OData-EntityId: {response.headers.get('OData-EntityId')!r}"
                self.vars[var] = m.group(1)
            elif source.startswith("header:"):
                self.vars[var] = response.headers[source[len("header:") :]]
            elif source.startswith("json:"):
                self.vars[var] = str(json_path(response.json(), source[len("json:") :]))
            else:
                raise AssertionError(f"unknown capture source {source!r}")

    def run(self, case: dict[str, Any]) -> None:
        steps = case["steps"]
        for index, step in enumerate(steps):
            response = self.send(step)
            poll = step.get("poll")
            if poll:
                deadline = time.monotonic() + poll.get("timeout", 30)
                while json_path(response.json(), poll["path"]) != poll["equals"] and time.monotonic() < deadline:
                    time.sleep(0.2)
                    response = self.send(step)
            where = f"step {index} {step['method']} {response.request.url}"
            if "expect" in step:
                check(self.sub(step["expect"]), response, where)
            elif "expect_status" in step:
                assert response.status_code == step["expect_status"], f"{where}: {response.status_code} {response.text}"
            self.capture(step, response)


def json_path(doc: Any, path: str) -> Any:
    for part in path.split("/") if path else []:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def check(expect: dict[str, Any], response: httpx.Response, where: str) -> None:
    body = response.text
    context = f"{where} -> {response.status_code} {dict(response.headers)} {body[:1500]}"
    if "status" in expect:
        assert response.status_code == expect["status"], context
    if "status_in" in expect:
        assert response.status_code in expect["status_in"], context
    for name, pattern in expect.get("headers", {}).items():
        assert name in response.headers, f"missing header {name}: {context}"
        assert re.search(pattern, response.headers[name]), f"header {name}={response.headers[name]!r} !~ {pattern}"
    for name in expect.get("headers_absent", []):
        assert name not in response.headers, f"unexpected header {name}: {context}"
    if "content_type" in expect:
        assert re.search(expect["content_type"], response.headers.get("Content-Type", "")), context
    if "text_regex" in expect:
        assert re.fullmatch(expect["text_regex"], body), context
    if "json_keys" in expect:
        if expect["json_keys"] is None:
            assert body == "", f"expected no body: {context}"
        else:
            assert sorted(response.json()) == sorted(expect["json_keys"]), context
    if "error" in expect:
        error = response.json()["error"]
        if expect["error"].get("code") is not None:
            assert error.get("code") == expect["error"]["code"], context
        assert isinstance(error.get("message"), str), context
        if "message" in expect["error"]:
            assert error["message"] == expect["error"]["message"], context
        if "message_regex" in expect["error"]:
            assert re.search(expect["error"]["message_regex"], error["message"]), context
    if "value_keys" in expect:
        rows = response.json()["value"]
        assert rows, f"expected rows: {context}"
        for row in rows:
            assert sorted(row) == sorted(expect["value_keys"]), context
    if "value_count" in expect:
        assert len(response.json()["value"]) == expect["value_count"], context
    for path, value in expect.get("json_equals", {}).items():
        assert json_path(response.json(), path) == value, f"{path}: {context}"
    if "parts" in expect:
        check_parts(expect["parts"], response, context)


def batch_parts(response: httpx.Response) -> list[dict[str, Any]]:
    """The operation responses of a ``$batch`` answer, change set parts flattened, in order (CRLF framing)."""
    m = re.fullmatch(r"multipart/mixed; boundary=(batchresponse_[0-9a-f-]{36})", response.headers["Content-Type"])
    assert m, response.headers["Content-Type"]

    def split(text: str, boundary: str) -> list[str]:
        body, closing, _ = text.partition(f"--{boundary}--")
        assert closing, f"no closing delimiter --{boundary}--"
        return [p.removeprefix("\r\n") for p in body.split(f"--{boundary}")[1:]]

    out: list[dict[str, Any]] = []
    for chunk in split(response.text, m.group(1)):
        mime, _, rest = chunk.partition("\r\n\r\n")
        inner = re.search(r"boundary=(changesetresponse_[0-9a-f-]{36})", mime)
        chunks = [(c, True) for c in split(rest, inner.group(1))] if inner else [(chunk, False)]
        for sub, in_changeset in chunks:
            mime, _, http_part = sub.partition("\r\n\r\n")
            mime_headers = dict(line.split(": ", 1) for line in mime.split("\r\n") if line)
            head, _, body = http_part.partition("\r\n\r\n")
            status_line, *lines = head.split("\r\n")
            assert re.fullmatch(r"HTTP/1\.1 \d{3} [A-Za-z ]+", status_line), status_line
            out.append(
                {
                    "status": int(status_line.split()[1]),
                    "content_id": mime_headers.get("Content-ID"),
                    "changeset": in_changeset,
                    "headers": dict(line.split(": ", 1) for line in lines),
                    "body": body.strip(),
                }
            )
    return out


def check_parts(expected: list[dict[str, Any]], response: httpx.Response, context: str) -> None:
    """``parts``: per operation response ``status``, ``content_id``, ``changeset``, ``headers`` (regex) and
    ``error_code``, in order; the count must match."""
    parts = batch_parts(response)
    assert len(parts) == len(expected), f"{len(parts)} parts: {context}"
    for want, got in zip(expected, parts, strict=True):
        assert got["status"] == want["status"], f"{got}: {context}"
        for key in ("content_id", "changeset"):
            if key in want:
                assert got[key] == want[key], f"{key} {got}: {context}"
        for name, pattern in want.get("headers", {}).items():
            assert name in got["headers"] and re.search(pattern, got["headers"][name]), f"{name} {got}: {context}"
        if "error_code" in want:
            assert json.loads(got["body"])["error"]["code"] == want["error_code"], f"{got}: {context}"


@pytest.mark.parametrize("case_file", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_doc_case(case_file: Path, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    case = load_case(case_file)
    if "emulator_args" in case:  # e.g. the throttle model: a dedicated emulator started with these CLI options
        with dedicated_emulator(tmp_path_factory, case["emulator_args"]) as (served, client):
            CaseRun(served, client).run(case)
        return
    served_emulator = request.getfixturevalue("served_emulator")
    CaseRun(served_emulator, request.getfixturevalue("api_client")).run(case)


@contextlib.contextmanager
def dedicated_emulator(
    tmp_path_factory: pytest.TempPathFactory, args: list[str]
) -> Iterator[tuple[ServedEmulator, httpx.Client]]:
    """A fresh ``python -m dataverse_emulator --tls <args>`` process and a client holding its token."""
    proc, served = start_emulator(tmp_path_factory.mktemp("dedicated"), *args)
    try:
        tls = ssl.create_default_context(cafile=str(served.ca_file))
        with httpx.Client(verify=tls, trust_env=False, timeout=30) as client:
            conn = served.connection
            token = client.post(
                conn["token_url"],
                data={
                    "grant_type": "client_credentials",
                    "client_id": conn["client_id"],
                    "client_secret": conn["client_secret"],
                    "scope": f"{served.base_url}/.default",
                },
            )
            assert token.status_code == 200, token.text
            client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
            yield served, client
    finally:
        proc.terminate()
        proc.wait(10)


def test_every_listed_behaviour_has_a_case() -> None:
    behaviours = listed_behaviours()
    covered = {load_case(p)["behaviour"] for p in CASE_FILES}
    missing = sorted(set(behaviours) - covered)
    assert not missing, f"behaviours in BEHAVIOURS.txt without a case in doc_cases/: {missing}"
    unknown = sorted(covered - set(behaviours))
    assert not unknown, f"cases naming behaviours not listed in BEHAVIOURS.txt: {unknown}"


def test_cases_are_well_formed() -> None:
    assert len(CASE_FILES) >= 30
    for path in CASE_FILES:
        case = load_case(path)
        assert set(case) <= {"behaviour", "doc", "doc_quote", "provenance", "notes", "steps", "emulator_args"}, path
        assert case["doc"].startswith(("powerapps-docs/", "MicrosoftDocs/", "microsoft/")), path
        assert case["doc_quote"].strip(), path
        assert case["provenance"] in ("DOC", "DOC-REF", "SAMPLE", "COMMUNITY", "UNVERIFIED"), path
        assert "expect" in case["steps"][-1], path
        expect = case["steps"][-1]["expect"]
        assert "status" in expect or "status_in" in expect, path
        if expect.get("status", 200) >= 400 or "status_in" in expect:
            assert "error" in expect or expect.get("status") == 401 or "json_keys" in expect or "parts" in expect, path


def test_part_two_fetchxml_and_metadata_sections_are_covered() -> None:
    """Sections 5 (FetchXML) and 9 (metadata writes) of the reference, with their 11.3/14 rows, each have cases."""
    covered = {load_case(p)["behaviour"] for p in CASE_FILES}
    required = {
        "fetchxml-nulls-omitted",
        "fetchxml-paging-cookie-annotations",
        "fetchxml-last-page-no-annotations",
        "fetchxml-simple-paging-limit",
        "fetchxml-aggregate-limit",
        "metadata-create-column-204",
        "metadata-update-put-only",
        "metadata-create-table-204",
    }
    assert required <= covered, sorted(required - covered)
    assert required <= set(listed_behaviours())


#: Part 2 behaviours of $batch, bulk messages and service protection (reference 6, 7, 8, 15.3, 15.6, 11.3, 14).
PART_TWO_BATCH_BULK_LIMITS = {
    "batch-changeset-content-id",
    "batch-stop-on-first-error",
    "batch-continue-on-error",
    "batch-changeset-rollback",
    "batch-get-in-changeset-refused",
    "batch-lf-only-refused",
    "bulk-create-multiple-ids",
    "bulk-update-multiple-204",
    "bulk-upsert-multiple-204",
    "bulk-all-or-nothing",
    "bulk-availability-probe",
    "bulk-delete-job",
    "throttle-requests-429",
    "throttle-execution-time-429",
    "throttle-concurrency-429",
    "throttle-headers",
}


def test_part_two_batch_bulk_and_limits_are_covered() -> None:
    """Sections 6 to 8 of the reference (with 15.3, 15.6 and their 11.3/14 rows) each have a case; a raw ``body`` step
    names its content type, and a case that needs its own emulator (throttle limits) says with which CLI options."""
    covered = {load_case(p)["behaviour"] for p in CASE_FILES}
    assert covered >= PART_TWO_BATCH_BULK_LIMITS, sorted(PART_TWO_BATCH_BULK_LIMITS - covered)
    assert set(listed_behaviours()) >= PART_TWO_BATCH_BULK_LIMITS
    for path in CASE_FILES:
        case = load_case(path)
        for step in case["steps"]:
            if "body" in step:
                assert "Content-Type" in step.get("headers", {}), path
        if case["behaviour"].startswith("throttle-") and case["behaviour"] != "throttle-headers":
            assert "--throttle" in case.get("emulator_args", []), path
            assert "Retry-After" in case["steps"][-1]["expect"]["headers"], path
        if "emulator_args" in case:
            assert all(isinstance(a, str) for a in case["emulator_args"]), path
