"""The receiver cannot be exhausted: nothing of a body is read before the key and the declared length pass, a body is
counted and cut at ``max_body_bytes``, a slow body is cut at its deadline, hostile JSON is a 400 with its reason,
and the deduplication file (refused outside the operator's folders in ``hosted``) outlives a restart.

The ASGI app is called directly with a ``receive`` that counts its calls, so "never read" is a number, not a guess;
the slow sender is a ``receive`` that never completes, cut by a deadline of a few hundredths of a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from connector.errors import ConnectionConfigError, InputError
from connector.policy import OperatorPolicy
from connector.runtime import Runtime
from connector.webhook_dedupe import SqliteDedupeStore, dedupe_store_for
from connector.webhook_server import create_asgi_app, serve
from tests.webhooks.conftest import KEY, payload
from tests.webhooks.test_webhook_security import Receiver, post

UPDATE = "use-webhooks-update-contact.json"
BODY = json.dumps(payload(UPDATE)).encode()
HUGE = 200 * 1024 * 1024
CHUNK = 64 * 1024
HOSTED = OperatorPolicy(preset="hosted")


class Sender:
    """Plays the client side of one ASGI request: a ``receive`` that counts its calls and a ``send`` that keeps
    the answer. ``chunks`` are handed out one per call, the last one ending the body; with ``stall``, the body does
    not end and ``receive`` then waits for ever (a sender that stopped sending); ``endless`` sends 64 KB chunks for
    ever."""

    def __init__(self, chunks: list[bytes] | None = None, *, stall: bool = False, endless: bool = False) -> None:
        self.chunks = list(chunks or [])
        self.stall = stall
        self.endless = endless
        self.calls = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    async def receive(self) -> dict[str, Any]:
        self.calls += 1
        if self.endless:
            return {"type": "http.request", "body": b"x" * CHUNK, "more_body": True}
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": self.stall or bool(self.chunks)}
        await asyncio.Event().wait()  # the sender stalls: nothing more ever arrives
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def call(self, app: Callable[..., Awaitable[None]], query: str = f"code={KEY}", **headers: str) -> dict[str, Any]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "root_path": "",
            "query_string": query.encode(),
            "headers": [(k.encode(), v.encode()) for k, v in {"content-type": "application/json", **headers}.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("receiver", 80),
        }
        asyncio.run(app(scope, self.receive, self.send))
        return dict(json.loads(self.body))


@pytest.fixture(autouse=True)
def _quiet_httpx(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="httpx")  # the client plays Dataverse: ?code=<key> in its URLs


@pytest.fixture
def events() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def app(runtime: Runtime, config: dict[str, Any], events: list[dict[str, Any]]) -> Any:
    return create_asgi_app(config, events.append, runtime=runtime, body_timeout=0.05)


def test_webhook_declared_length_over_the_limit_refused_before_reading(app: Any, events: list[Any]) -> None:
    sender = Sender([b"x" * CHUNK])
    answer = sender.call(app, **{"content-length": str(HUGE)})
    assert (sender.status, sender.calls) == (413, 0), "413 from the declared length alone: no receive call"
    assert "max_body_bytes" in answer["message"] and sender.headers["connection"] == "close"
    assert events == []


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        pytest.param("", {"content-length": str(HUGE)}, id="no-key-declared-length"),
        pytest.param("code=wrong", {}, id="wrong-key-chunked"),
        pytest.param("", {"content-length": "10"}, id="no-key-small-body"),
    ],
)
def test_webhook_key_checked_before_the_body(app: Any, query: str, headers: dict[str, str]) -> None:
    sender = Sender(endless=True)
    sender.call(app, query, **headers)
    assert (sender.status, sender.calls) == (401, 0), "an unauthenticated body is never read"
    assert sender.headers["connection"] == "close", "the connection closes rather than draining the rest"


def test_webhook_chunked_body_counted_and_cut_at_the_limit(app: Any, config: dict[str, Any]) -> None:
    sender = Sender(endless=True)  # no content-length: the body is as long as the sender likes
    answer = sender.call(app)
    limit = 1024 * 1024  # the default max_body_bytes
    assert sender.status == 413 and "max_body_bytes (1048576)" in answer["message"]
    assert sender.calls == limit // CHUNK + 1, "reading stops at the first chunk past the limit"


def test_webhook_lying_content_length_still_cut(app: Any) -> None:
    sender = Sender(endless=True)
    sender.call(app, **{"content-length": "2000"})
    assert sender.status == 413 and sender.calls == 1024 * 1024 // CHUNK + 1


def test_webhook_slow_body_cut_at_its_deadline(runtime: Runtime, config: dict[str, Any]) -> None:
    counts: list[Any] = []
    app = create_asgi_app(config, print, runtime=runtime, body_timeout=0.05, progress=counts.append)
    sender = Sender([BODY[:100], BODY[100:200]], stall=True)  # two chunks, then nothing more
    started = time.monotonic()
    answer = sender.call(app, **{"content-length": str(len(BODY))})
    elapsed = time.monotonic() - started
    assert sender.status == 408 and "within 0.05 s" in answer["message"]
    assert sender.headers["connection"] == "close"
    assert 0.05 <= elapsed < 2, f"cut after {elapsed:.3f} s for a deadline of 0.05 s"
    assert sender.calls == 3 and counts[-1].counts["refused_payload"] == 1


def test_webhook_whole_body_within_the_deadline_is_delivered(app: Any, events: list[dict[str, Any]]) -> None:
    sender = Sender([BODY[:100], BODY[100:]])
    assert sender.call(app, **{"content-length": str(len(BODY))}) == {"accepted": True, "duplicate": False}
    assert sender.status == 200 and len(events) == 1 and "connection" not in sender.headers


def _nested(depth: int) -> bytes:
    context = payload(UPDATE)
    text = json.dumps({**context, "Extra": "@"})
    return text.replace('"@"', "[" * depth + "]" * depth).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(_nested(100_000), "nested deeper than 64 levels", id="100000-deep"),
        pytest.param(BODY.replace(b'"Depth": 1', b'"Depth": NaN'), "NaN is not JSON", id="nan"),
        pytest.param(BODY.replace(b'"Depth": 1', b'"Depth": Infinity'), "Infinity is not JSON", id="infinity"),
        pytest.param(BODY.replace(b'"Depth": 1', b'"Depth": 1e400'), "too large for a double", id="1e400"),
        pytest.param(BODY.replace(b'"Update"', b'"Upd\\ud800"', 1), "lone surrogate", id="lone-surrogate"),
        pytest.param(b'{"MessageName": "\xff"}', "not UTF-8", id="not-utf8"),
    ],
)
def test_webhook_hostile_json_is_a_400_with_its_reason(
    runtime: Runtime, config: dict[str, Any], events: list[Any], body: bytes, reason: str
) -> None:
    assert body != BODY
    client = Receiver(create_asgi_app(config, events.append, runtime=runtime))
    response = post(client, body)
    assert response.status_code == 400, response.text
    assert reason in response.json()["message"]
    assert events == []


# -- deduplication across restarts and the operator policy ------------------------------------------------------------
def test_webhook_replay_after_a_restart_refused(config: dict[str, Any], tmp_path: Path) -> None:
    shared = {**config, "dedupe_sqlite_path": str(tmp_path / "dedupe.sqlite")}
    answers, handed = [], []
    for _ in range(2):  # two receivers, one after the other: a restart with a fresh runtime
        runtime = Runtime(load_entrypoints=False)
        answers.append(post(Receiver(create_asgi_app(shared, handed.append, runtime=runtime)), BODY).json())
        runtime.close()
    assert answers == [{"accepted": True, "duplicate": False}, {"accepted": True, "duplicate": True}]
    assert len(handed) == 1


def test_webhook_dedupe_file_outside_the_hosted_folders_refused_before_opening(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "dedupe.sqlite"
    target.parent.mkdir()
    with pytest.raises(ConnectionConfigError) as err:
        dedupe_store_for(10, str(target), HOSTED)
    assert err.value.field == "dedupe_sqlite_path" and "D365_ALLOWED_PATHS" in err.value.message
    assert not target.exists(), "refused before SQLite created the file"
    allowed = OperatorPolicy(preset="hosted", allowed_paths=(tmp_path.resolve(),))
    store = dedupe_store_for(10, str(target), allowed)
    assert isinstance(store, SqliteDedupeStore) and target.exists()
    store.close()


def test_webhook_hosted_runtime_refuses_the_dedupe_file(
    runtime: Runtime, config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "dedupe.sqlite"
    settings = {**config, "dedupe_sqlite_path": str(target)}
    client = Receiver(create_asgi_app(settings, print, runtime=runtime, policy=HOSTED))
    with pytest.raises(ConnectionConfigError, match="dedupe_sqlite_path names a file outside"):
        post(client, BODY)
    assert not target.exists()
    monkeypatch.setenv("D365_POLICY", "hosted")  # the library's default policy comes from the environment
    with pytest.raises(ConnectionConfigError):
        post(Receiver(create_asgi_app(settings, print, runtime=Runtime(load_entrypoints=False))), BODY)
    assert not target.exists()


def test_webhook_serve_refuses_a_forbidden_dedupe_file_before_listening(
    runtime: Runtime, config: dict[str, Any], tmp_path: Path
) -> None:
    statuses: list[dict[str, Any]] = []
    settings = {**config, "dedupe_sqlite_path": str(tmp_path / "dedupe.sqlite")}
    with pytest.raises(InputError, match=r"\$\.dedupe_sqlite_path: .*outside the folders") as caught:
        serve(runtime, settings, on_event=print, on_status=statuses.append, policy=HOSTED)
    assert caught.value.exit_code == 2 and statuses == []
    missing = {**config, "dedupe_sqlite_path": str(tmp_path / "no-such-folder" / "dedupe.sqlite")}
    with pytest.raises(InputError, match=r"\$\.dedupe_sqlite_path: .*cannot be opened as a SQLite file"):
        serve(runtime, missing, on_event=print, on_status=statuses.append)
    assert statuses == []


def test_webhook_secret_sources_obey_the_hosted_policy(
    runtime: Runtime, config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D365_TEST_HOSTED_WEBHOOK_KEY", KEY)
    (tmp_path / "key.txt").write_text(KEY, encoding="utf-8")
    from_env = {**config, "secret": {"env": "D365_TEST_HOSTED_WEBHOOK_KEY"}}
    from_file = {**config, "secret": {"file": str(tmp_path / "key.txt")}}
    with pytest.raises(InputError, match=r"\$\.secret: .*D365_ALLOWED_ENV_PREFIXES"):
        serve(runtime, from_env, on_event=print, on_status=print, policy=HOSTED)
    with pytest.raises(InputError, match=r"\$\.secret: .*D365_ALLOWED_PATHS"):
        serve(runtime, from_file, on_event=print, on_status=print, policy=HOSTED)
    handed: list[Any] = []
    for settings in (from_env, from_file):
        response = post(Receiver(create_asgi_app(settings, handed.append, runtime=runtime, policy=HOSTED)), BODY)
        assert response.status_code == 500 and "hosted connector may" in response.json()["message"]
    allowed = OperatorPolicy(
        preset="hosted", allowed_paths=(tmp_path.resolve(),), allowed_env_prefixes=("D365_TEST_HOSTED_",)
    )
    for settings in (from_env, from_file):
        response = post(Receiver(create_asgi_app(settings, handed.append, runtime=runtime, policy=allowed)), BODY)
        assert response.status_code == 200
    assert len(handed) == 1, "the second is a redelivery of the first"
