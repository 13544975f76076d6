"""The hosted policy and a state store outside a SQLite file: only a database the operator lists in its environment
(D365_ALLOWED_STATE_URLS), compared part by part as SQLAlchemy parses it, so a URL that only looks like the listed one
is refused; the URL's password appears in no error and no repr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.errors import ConnectionConfigError
from connector.policy import OperatorPolicy
from connector.sync.definition import check_url_policy, load_definition
from connector.sync.state import StateStore
from tests.services import free_port

MINIMAL: dict[str, Any] = {
    "name": "accounts",
    "source": {"path": "companies.csv"},
    "target": "account",
    "match": {"key": "accountnumber"},
    "mapping": [{"source": "number", "target": "accountnumber"}],
}
LISTED = "postgresql://db.internal:5432/d365state"


def hosted(folder: Path, *urls: str) -> OperatorPolicy:
    environ = {"D365_ALLOWED_PATHS": str(folder), "D365_ALLOWED_STATE_URLS": ",".join(urls)}
    return OperatorPolicy.from_env("hosted", environ)


def test_a_postgresql_state_is_refused_without_the_operators_listing(tmp_path: Path) -> None:
    state = "postgresql+psycopg://sync:s3cret-pw@db.internal/d365state"
    with pytest.raises(ConnectionConfigError) as caught:
        load_definition({**MINIMAL, "state": state}, policy=hosted(tmp_path), base_dir=tmp_path)
    assert caught.value.field == "state"
    assert "D365_ALLOWED_STATE_URLS=" in str(caught.value)  # the fix
    assert "s3cret-pw" not in str(caught.value) and "s3cret-pw" not in repr(caught.value)


@pytest.mark.parametrize(
    "state",
    [
        "postgresql+psycopg://sync:s3cret-pw@db.internal:5432/d365state",
        "postgresql://db.internal/d365state",  # the default port is the listed one
        "postgresql+psycopg://other-user@DB.Internal./d365state",  # host names are case-insensitive, the root dot
    ],
)
def test_a_listed_database_is_allowed_whatever_its_credentials_and_driver(tmp_path: Path, state: str) -> None:
    definition = load_definition({**MINIMAL, "state": state}, policy=hosted(tmp_path, LISTED), base_dir=tmp_path)
    assert definition.state == state
    assert "s3cret-pw" not in repr(definition)


@pytest.mark.parametrize(
    "state",
    [
        "postgresql://db.internal:5432@evil.example/d365state",  # db.internal:5432 is a user name here
        "postgresql://db.internal@evil.example:5432/d365state",
        "postgresql://db.internal.evil.example:5432/d365state",
        "postgresql://db.internal:5433/d365state",  # another port
        "postgresql://db.internal:5432/d365state2",  # another database
        "postgresql://db.internal:5432/d365stat",
        "postgresql://db.internal:5432/",
        "postgresql://db.internal:5432/d365state?host=evil.example",  # libpq's host parameter redirects
        "postgresql://db.internal:5432/d365state?options=-csearch_path%3Devil",
        "mysql://db.internal:5432/d365state",  # another backend
        "postgresql:///d365state",  # no host: a local socket, not the listed host
    ],
)
def test_a_url_that_only_resembles_the_listed_one_is_refused(tmp_path: Path, state: str) -> None:
    policy = hosted(tmp_path, LISTED)
    assert not policy.allows_state_url(state)
    with pytest.raises(ConnectionConfigError) as caught:
        load_definition({**MINIMAL, "state": state}, policy=policy, base_dir=tmp_path)
    assert caught.value.field == "state"


def test_a_listed_driver_or_user_narrows_the_listing() -> None:
    policy = OperatorPolicy(allowed_state_urls=("postgresql+psycopg://sync@db.internal/d365state",))
    assert policy.allows_state_url("postgresql+psycopg://sync:pw@db.internal:5432/d365state")
    assert not policy.allows_state_url("postgresql+psycopg2://sync:pw@db.internal/d365state")
    assert not policy.allows_state_url("postgresql+psycopg://postgres:pw@db.internal/d365state")
    assert not OperatorPolicy(allowed_state_urls=("not a url",)).allows_state_url("not a url")


def test_the_listing_is_for_state_only_not_for_a_source(tmp_path: Path) -> None:
    policy = hosted(tmp_path, LISTED)
    with pytest.raises(ConnectionConfigError) as caught:
        load_definition({**MINIMAL, "source": {"url": LISTED, "table": "t"}}, policy=policy, base_dir=tmp_path)
    assert caught.value.field == "source.url"
    check_url_policy(LISTED, policy, "--state", state=True)  # run-all's store: the same listing
    with pytest.raises(ConnectionConfigError, match="D365_ALLOWED_STATE_URLS"):
        check_url_policy(LISTED, hosted(tmp_path), "--state", state=True)


def test_a_state_store_that_cannot_connect_does_not_show_the_password() -> None:
    url = f"postgresql+psycopg://sync:s3cret-pw@127.0.0.1:{free_port()}/d365state"  # nothing listens there
    with pytest.raises(Exception) as caught:
        StateStore(url, "accounts")
    assert "s3cret-pw" not in str(caught.value) and "s3cret-pw" not in repr(caught.value)
