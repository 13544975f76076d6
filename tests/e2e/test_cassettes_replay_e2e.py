"""Every recorded cassette is replayed against the emulator: same status, same Dataverse error code, same JSON keys.

Cassettes hold Dataverse's (or Microsoft's documented) answers; the emulator claims to answer the same way. Token
requests are replayed with the emulator's own credentials (a cassette keeps no secret), Web API requests with its
token, on the path relative to the API root.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from dataverse_emulator.testing import EmulatorHandle

CASSETTES = sorted((Path(__file__).resolve().parents[1] / "cassettes").rglob("*.yaml"))


def interactions() -> list[Any]:
    out = []
    for path in CASSETTES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for n, item in enumerate(doc["interactions"]):
            out.append(pytest.param(item, id=f"{path.parent.name}/{path.stem}#{n}"))
    return out


def shape(body: str | bytes | None) -> tuple[frozenset[str] | None, str | None]:
    """The JSON keys of a body (nested ``error`` keys included) and its Dataverse error code."""
    if not body:
        return None, None
    data = json.loads(body)
    if not isinstance(data, dict):
        return None, None
    error = data.get("error")
    if isinstance(error, dict):
        return frozenset(data) | frozenset(f"error.{k}" for k in error), error.get("code")
    return frozenset(data), None


def test_cassettes_exist() -> None:
    assert CASSETTES, "tests/cassettes holds no cassette to replay"


@pytest.mark.parametrize("interaction", interactions())
def test_cassette_replays_the_same_against_the_emulator(
    interaction: dict[str, Any], fresh_emulator: EmulatorHandle
) -> None:
    request, recorded = interaction["request"], interaction["response"]
    url = urlsplit(request["uri"])
    config = fresh_emulator.connection_config()
    with httpx.Client(timeout=30) as http:
        if url.path.endswith("/oauth2/v2.0/token"):
            answer = http.post(
                config["token_url"],
                data={
                    "grant_type": "client_credentials",
                    "client_id": config["client_id"],
                    "client_secret": config["client_secret"],
                    "scope": f"{fresh_emulator.base_url}/.default",
                },
            )
        else:
            relative = url.path.split("/api/data/v9.2", 1)[1]
            target = f"{fresh_emulator.api_url}{relative}" + (f"?{url.query}" if url.query else "")
            headers = {
                k: v[0] for k, v in request.get("headers", {}).items() if k.lower() not in ("host", "authorization")
            }
            headers["Authorization"] = f"Bearer {fresh_emulator.token()}"
            answer = http.request(request["method"], target, headers=headers, content=request.get("body") or None)
    assert answer.status_code == recorded["status"]["code"]
    recorded_keys, recorded_code = shape(recorded["body"]["string"])
    got_keys, got_code = shape(answer.content)
    assert got_code == recorded_code
    assert got_keys == recorded_keys
