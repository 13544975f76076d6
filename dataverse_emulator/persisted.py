"""The replay of a ``--db`` file's schema writes on start: creates (``schema.py``) and deletes (``schema_deletes.py``)
in the order they were made."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .schema import do_create_column, do_create_relationship, do_create_table, do_seed, do_update_column
from .schema_deletes import replay

if TYPE_CHECKING:
    from .emulator import Emulator


def load_persisted(emu: Emulator) -> None:
    """Replay the schema writes stored in ``_emulator_schema`` (custom tables, columns, relationships, deletes)."""
    conn = emu.store.conn
    conn.execute("CREATE TABLE IF NOT EXISTS _emulator_schema (n INTEGER PRIMARY KEY, kind TEXT, body TEXT)")
    for kind, body in conn.execute("SELECT kind, body FROM _emulator_schema ORDER BY n").fetchall():
        data = json.loads(body)
        if kind == "table":
            do_create_table(emu, data, save=False)
        elif kind == "column":
            do_create_column(emu, emu.tables[data["table"]], data["body"], save=False)
        elif kind == "column_update":
            do_update_column(emu, emu.tables[data["table"]], data["name"], data["body"], data["merge"], save=False)
        elif kind == "relationship":
            do_create_relationship(emu, data, save=False)
        elif kind == "seed":
            do_seed(emu, data, save=False)
        else:
            replay(emu, kind, data)
