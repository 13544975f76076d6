"""The bearer token never shows in a traceback rendered with frame locals (Sentry, rich ``show_locals``).

Each scenario forces an exception in the request path while a real token is cached, renders the traceback the way a
frame-locals tool does, and searches the text for the token and the suite's sentinels.
"""

from __future__ import annotations

import io
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from rich.console import Console
from rich.traceback import Traceback

from connector import RetryPolicy
from connector.auth.base import _Token
from connector.connection import Connection
from connector.errors import ConnectorError
from connector.secret import Secret
from tests.conftest import SENTINELS


def _rendered(exc: BaseException) -> str:
    """The traceback as the stdlib (capture_locals) and rich (show_locals) render it, frames' locals included."""
    plain = "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(
        Traceback.from_exception(type(exc), exc, exc.__traceback__, show_locals=True, max_frames=0)
    )
    return plain + out.getvalue()


def _assert_no_token(text: str, tokens: list[str]) -> None:
    assert "Secret('***')" in text or "SecretStr" in text or "***" in text  # the locals were rendered at all
    for token in tokens:
        assert token not in text
    leaked = [name for name, value in SENTINELS.items() if value in text]
    assert leaked == []


class _Boom(Exception):
    """Not an httpx error: it travels up through every frame of the send, as a bug in a transport would."""


def _api_send_raises(cloud: Any) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise _Boom("transport bug")

    cloud.api_queue.append(boom)


def _refresh_after_401_is_unreachable(cloud: Any) -> None:
    cloud.api_queue.append(httpx.Response(401, json=cloud.error_body("0x80044302", "Request is not authenticated.")))
    cloud.token_queue.extend([_Boom("token endpoint bug")])


def _refresh_network_error(cloud: Any) -> None:
    cloud.api_queue.append(httpx.Response(401, json=cloud.error_body("0x80044302", "Request is not authenticated.")))
    cloud.token_queue.extend([httpx.ConnectError("connection refused")] * 10)


def _network_error(cloud: Any) -> None:
    cloud.api_queue.extend([httpx.ConnectError("connection refused")] * 10)


@pytest.mark.parametrize(
    "provoke",
    [_api_send_raises, _refresh_after_401_is_unreachable, _refresh_network_error, _network_error],
    ids=["transport-raises", "401-then-refresh-raises", "401-then-refresh-unreachable", "network-error"],
)
def test_token_absent_from_traceback_locals(cloud: Any, provoke: Callable[[Any], None]) -> None:
    conn = cloud.connect()
    conn.token()  # a real token is cached before the failing request
    provoke(cloud)
    with pytest.raises((_Boom, ConnectorError)) as info:
        conn.client.whoami()
    assert cloud.issued
    _assert_no_token(_rendered(info.value), cloud.issued)


@pytest.fixture
def hangup_server() -> Iterator[int]:
    """A socket that reads the request and closes without answering: httpcore's frames are on the stack."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
    listener.close()
    thread.join(5)


def test_token_absent_from_traceback_locals_over_a_real_socket(cloud: Any, hangup_server: int) -> None:
    """Dataverse calls go through httpx's real transport to a listener that hangs up after reading the headers."""
    real = httpx.HTTPTransport()

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "login.microsoftonline.com":
            return cloud.handler(request)
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=hangup_server)
        return real.handle_request(request)

    conn = Connection.from_config(
        cloud.config(), transport=httpx.MockTransport(route), clock=cloud.clock, retry=RetryPolicy(max_attempts=1)
    )
    conn.token()
    with pytest.raises(ConnectorError) as info:
        conn.client.whoami()
    _assert_no_token(_rendered(info.value), cloud.issued)
    real.close()


def test_token_repr_and_str_are_redacted() -> None:
    token = _Token(Secret(SENTINELS["access_token"]), 1.0, 2.0)
    assert SENTINELS["access_token"] not in repr(token)
    assert SENTINELS["access_token"] not in str(token)
    assert token.access_token.reveal() == SENTINELS["access_token"]


_ROTATED = SENTINELS["refresh_token"] + "-rotated"


@pytest.mark.parametrize("refresh_fails", [True, False], ids=["refresh-unreachable", "api-raises-after-rotation"])
def test_refresh_tokens_absent_from_traceback_locals(cloud: Any, refresh_fails: bool) -> None:
    """The authorization code kind: its refresh tokens (the configured one and a rotated one) stay out of frames.

    The rotated token is a module constant, not a local: the test's own frame is rendered too.
    """

    def user_token(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=dict(cloud.token_response().json(), refresh_token=_ROTATED))

    conn = cloud.connect(kind="authorization_code", client_secret=None, refresh_token=SENTINELS["refresh_token"])
    cloud.token_queue.append(user_token)
    conn.token()
    if refresh_fails:
        cloud.api_queue.append(httpx.Response(401, json=cloud.error_body("0x80044302", "not authenticated")))
        cloud.token_queue.extend([httpx.ConnectError("connection refused")] * 10)
    else:
        _api_send_raises(cloud)
    with pytest.raises((_Boom, ConnectorError)) as info:
        conn.client.whoami()
    text = _rendered(info.value)
    _assert_no_token(text, [*cloud.issued, _ROTATED, SENTINELS["refresh_token"]])


def test_token_absent_from_traceback_locals_of_test_connection(cloud: Any) -> None:
    """``test_connection`` reads the token to check its audience, then calls WhoAmI in the same frame."""
    from connector.diagnostics import test_connection

    conn = cloud.connect()
    _api_send_raises(cloud)
    with pytest.raises(_Boom) as info:
        test_connection(conn)
    _assert_no_token(_rendered(info.value), cloud.issued)
