"""The schema-returning data sources keep the one answer shape: a one-element list, or the runtime refuses it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from connector.connection import Connection
from connector.errors import ContractError
from connector.hookspecs import hookimpl
from connector.runtime import Runtime


class TwoSchemas:
    @hookimpl(tryfirst=True)
    def data_source(self, name: str, params: Mapping[str, Any], connection: Connection) -> list[dict[str, Any]]:
        return [{"type": "object"}, {"type": "object"}]


def test_a_schema_source_answering_more_than_one_schema_is_our_bug(conn: Connection) -> None:
    runtime = Runtime(load_entrypoints=False)
    runtime.pm.register(TwoSchemas())
    with pytest.raises(ContractError, match="answer one JSON Schema, not 2"):
        runtime.data_source("key_schema", {"table": "account"}, conn)
    assert len(runtime.data_source("records", {"table": "account"}, conn)) == 2  # an options source may list many
