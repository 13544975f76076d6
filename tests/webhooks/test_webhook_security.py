"""Deliveries that must not become events: each is refused (or acknowledged) with the right status, none emitted.

The ASGI app is driven in-process through httpx's ASGITransport, so the statuses are the ones Dataverse would see.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from connector import webhook_delivery, webhook_server
from connector.errors import InputError, WebhookError, WebhookPayloadError, WebhookVerificationError
from connector.runtime import Runtime
from connector.webhook_server import create_asgi_app
from tests.conftest import assert_no_secrets
from tests.webhooks.conftest import KEY, delivery, payload

UPDATE = "use-webhooks-update-contact.json"


@pytest.fixture
def app_client(
    runtime: Runtime, config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> Iterator[tuple[Receiver, list[dict[str, Any]]]]:
    # this client plays Dataverse, whose URL carries ?code=<key>; httpx logs request URLs at INFO
    caplog.set_level(logging.WARNING, logger="httpx")
    events: list[dict[str, Any]] = []
    app = create_asgi_app(config, events.append, runtime=runtime)
    yield Receiver(app), events


class Receiver:
    """A synchronous face on httpx's async ASGITransport (Starlette's TestClient wants the httpx2 fork)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(go())

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def get(self, url: str) -> httpx.Response:
        return self.request("GET", url)


def post(client: Receiver, body: bytes, query: str = f"code={KEY}", **headers: str) -> httpx.Response:
    return client.post(f"/?{query}", content=body, headers={"content-type": "application/json", **headers})


BODY = json.dumps(payload(UPDATE)).encode()


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        pytest.param("", {}, 401, id="missing-key"),
        pytest.param("code=SENTINEL-webhook-key-093bd2", {}, 401, id="wrong-key"),
        pytest.param("code=short", {}, 401, id="key-of-another-length"),
        pytest.param("", {"code": KEY}, 401, id="key-in-a-header"),
        pytest.param(f"key={KEY}", {}, 401, id="key-under-another-parameter"),
        pytest.param(f"code={KEY}&code={KEY}", {}, 401, id="key-twice"),
    ],
)
def test_webhook_refuses_bad_keys(
    app_client: tuple[Receiver, list[dict[str, Any]]], query: str, headers: dict[str, str], status: int
) -> None:
    client, events = app_client
    response = post(client, BODY, query, **headers)
    assert response.status_code == status
    assert events == []
    assert_no_secrets(response.text)


def test_webhook_key_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch, handle: Callable[..., Any]) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhook_delivery.hmac, "compare_digest", spy)
    with pytest.raises(WebhookVerificationError) as err:
        handle(delivery(payload(UPDATE), query="code=short"))
    assert err.value.status_code == 401
    assert len(calls) == 1 and len(calls[0][0]) != len(calls[0][1]), "another length still goes through compare_digest"
    assert_no_secrets(str(err.value), repr(err.value), err.value.to_dict())
    calls.clear()
    with pytest.raises(WebhookVerificationError):
        handle(delivery(payload(UPDATE), query=""))
    assert len(calls) == 1, "a missing key is compared too, so timing does not tell missing from wrong"
    calls.clear()
    assert handle(delivery(payload(UPDATE))) is not None
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("mode", "name", "good", "bad"),
    [
        pytest.param(
            "http_header",
            "x-functions-key",
            {"headers": {"X-Functions-Key": KEY}},
            {"query": f"x-functions-key={KEY}"},
            id="header-mode-key-in-query",
        ),
        pytest.param(
            "http_query_string",
            "token",
            {"query": f"token={KEY}"},
            {"headers": {"token": KEY}, "query": ""},
            id="query-mode-key-in-header",
        ),
    ],
)
def test_webhook_other_modes_check_their_place(
    handle: Callable[..., Any], mode: str, name: str, good: dict[str, Any], bad: dict[str, Any]
) -> None:
    settings = {"authentication": mode, "auth_name": name}
    assert handle(delivery(payload(UPDATE), **{"query": "", **good}), **settings) is not None
    with pytest.raises(WebhookVerificationError):
        handle(delivery(payload(UPDATE), **bad), **settings)


def test_webhook_replayed_delivery_acknowledged_once(app_client: tuple[Receiver, list[dict[str, Any]]]) -> None:
    client, events = app_client
    first, second = post(client, BODY), post(client, BODY)
    assert (first.status_code, second.status_code) == (200, 200), "a replay is acknowledged so Dataverse stops"
    assert second.json()["duplicate"] is True
    assert len(events) == 1


def test_webhook_malformed_and_oversized_bodies(app_client: tuple[Receiver, list[dict[str, Any]]]) -> None:
    client, events = app_client
    assert post(client, b'{"MessageName": "Update",').status_code == 400
    assert post(client, b"[1, 2]").status_code == 400
    assert post(client, BODY, **{"content-type": "text/plain"}).status_code == 415
    assert post(client, BODY, **{"content-type": "application/json; charset=utf-8"}).status_code == 200
    huge = json.dumps({**payload(UPDATE), "OperationId": None, "padding": "x" * (1024 * 1024)}).encode()
    assert post(client, huge).status_code == 413
    assert client.get(f"/?code={KEY}").status_code == 405
    assert len(events) == 1


def test_webhook_payload_for_another_table(handle: Callable[..., Any]) -> None:
    context = payload(UPDATE)
    context["PrimaryEntityName"] = "account"
    with pytest.raises(WebhookPayloadError) as err:
        handle(delivery(context))
    assert err.value.status_code == 422
    context = payload(UPDATE)
    context["MessageName"] = "Assign"
    with pytest.raises(WebhookPayloadError):
        handle(delivery(context))


def test_webhook_config_validated_by_runtime(runtime: Runtime) -> None:
    from connector.errors import InputError

    with pytest.raises(InputError) as err:
        runtime.handle_trigger(
            "webhook", delivery(payload(UPDATE)), {"table": "contact", "authentication": "http_header"}
        )
    paths = " ".join(p.message for p in err.value.problems)
    assert "auth_name" in paths and "secret" in paths
    assert isinstance(err.value, Exception) and not isinstance(err.value, WebhookError)


def test_webhook_unauthenticated_mode_warns_and_accepts(
    handle: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    assert handle(delivery(payload(UPDATE), query=""), authentication="none") is not None


def test_webhook_request_repr_hides_the_key() -> None:
    assert_no_secrets(repr(delivery(payload(UPDATE))))


def test_webhook_secret_from_an_unset_variable_is_the_receivers_fault(
    handle: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("D365_UNSET_WEBHOOK_KEY", raising=False)
    with pytest.raises(WebhookError) as err:
        handle(delivery(payload(UPDATE)), secret={"env": "D365_UNSET_WEBHOOK_KEY"})
    assert err.value.status_code == 500 and "D365_UNSET_WEBHOOK_KEY" in err.value.message


def test_webhook_failed_handler_lets_the_retry_through(
    runtime: Runtime, config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="httpx")  # this client plays Dataverse: ?code=<key> in its URLs
    seen: list[dict[str, Any]] = []

    def flaky(event: dict[str, Any]) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("downstream unavailable")

    client = Receiver(create_asgi_app(config, flaky, runtime=runtime))
    assert post(client, BODY).status_code == 500
    retry = post(client, BODY)
    assert retry.status_code == 200 and retry.json()["duplicate"] is False
    assert len(seen) == 2


def test_webhook_serve_needs_a_public_url_for_a_remote_organization(runtime: Runtime, config: dict[str, Any]) -> None:
    class Remote:
        organization_url = "https://contoso.crm.dynamics.com"

    with pytest.raises(WebhookError, match="--public-url"):
        webhook_server.serve(runtime, config, connection=Remote(), on_event=print, on_status=print)  # type: ignore[arg-type]


def test_webhook_serve_refuses_an_unset_secret_variable_before_listening(
    runtime: Runtime, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("D365_TEST_UNSET_WEBHOOK_KEY", raising=False)
    statuses: list[dict[str, Any]] = []
    config = {**config, "secret": {"env": "D365_TEST_UNSET_WEBHOOK_KEY"}}
    with pytest.raises(InputError, match=r"\$\.secret: .*D365_TEST_UNSET_WEBHOOK_KEY, which is not set") as caught:
        webhook_server.serve(runtime, config, on_event=print, on_status=statuses.append)
    assert caught.value.exit_code == 2
    assert statuses == []
