"""Fixtures for the webhook trigger: a runtime, a configuration holding the sentinel key, deliveries built as
Dataverse sends them (``?code=`` for WebhookKey, JSON body, the ``x-ms-dynamics-*`` headers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector.runtime import Runtime
from connector.webhook_delivery import WebhookRequest
from tests.conftest import SENTINELS

PAYLOADS = Path(__file__).parent / "payloads"
KEY = SENTINELS["webhook_key"]


def payload(name: str) -> dict[str, Any]:
    return dict(json.loads((PAYLOADS / name).read_text(encoding="utf-8")))


def delivery(
    context: dict[str, Any] | bytes,
    *,
    query: str = f"code={KEY}",
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> WebhookRequest:
    body = context if isinstance(context, bytes) else json.dumps(context).encode()
    base = {"content-type": "application/json", "x-ms-dynamics-organization": "contoso.crm.dynamics.com"}
    if isinstance(context, dict):
        base["x-ms-dynamics-entity-name"] = str(context.get("PrimaryEntityName"))
        base["x-ms-dynamics-request-name"] = str(context.get("MessageName"))
    url = "https://hooks.example.net/dataverse" + (f"?{query}" if query else "")
    return WebhookRequest.build(method, url, {**base, **(headers or {})}, body)


@pytest.fixture
def runtime() -> Runtime:
    """Per test, so each test starts with an empty deduplication memory."""
    return Runtime(load_entrypoints=False, validate_output=True)


@pytest.fixture
def config() -> dict[str, Any]:
    return {"table": "contact", "messages": ["Create", "Update", "Delete"], "secret": KEY}


@pytest.fixture
def handle(runtime: Runtime, config: dict[str, Any]) -> Callable[..., dict[str, Any] | None]:
    """Deliver through the runtime's trigger entry point, as production does (validation and deduplication)."""

    def run(request: WebhookRequest, **overrides: Any) -> dict[str, Any] | None:
        return runtime.handle_trigger("webhook", request, {**config, **overrides})

    return run
