"""Write-back: each row's outcome and Dataverse id written into the warehouse after a run, so it can join results.

Where: into the DuckDB database the sync reads (``source.duckdb``), else into a DuckDB file beside the definition,
``<name>.writeback.duckdb`` (a CSV, Parquet or JSON-lines source is not a database to add a table to, and a
SQLAlchemy database is not written to: it is opened read-only). The table holds the runs' ledgers, one row per run
and source row; a run's rows are replaced whole when it is written again (the write is idempotent), so the table
equals the ledger of every run it holds. The warehouse joins on ``match_key`` (the canonical JSON of the key, e.g.
``{"accountnumber":"A-1"}``; ``json_extract_string(match_key, '$.accountnumber')``) or on ``source_index``.

Operator policy: in ``hosted`` the file must lie under D365_ALLOWED_PATHS (checked before the run sends anything);
elsewhere nothing is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from connector.errors import InputError, InputProblem
from connector.policy import OperatorPolicy
from connector.sync.sources import DUCKDB_CONFIG
from connector.sync.state import LedgerRow

if TYPE_CHECKING:
    from connector.sync.definition import SyncDefinition

__all__ = ["COLUMNS", "WriteBack", "write_back_target"]

COLUMNS = (
    ("sync", "VARCHAR"),
    ("run", "BIGINT"),
    ("source_index", "BIGINT"),
    ("match_key", "VARCHAR"),
    ("outcome", "VARCHAR"),
    ("dataverse_id", "VARCHAR"),
    ("duplicate_of", "BIGINT"),
    ("code", "VARCHAR"),
    ("message", "VARCHAR"),
    ("request_id", "VARCHAR"),
)
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_ROWS_PER_INSERT = 10_000


def _refused(message: str) -> InputError:
    return InputError([InputProblem("--write-back", message)])


def write_back_target(definition: SyncDefinition, table: str, *, policy: OperatorPolicy, base_dir: Path) -> WriteBack:
    """The write-back a run will do, checked before the run: the table's name, the file, the policy."""
    if not _TABLE.fullmatch(table):
        raise _refused(f"{table!r} is not a plain table name: letters, digits and _, not starting with a digit")
    source = definition.source
    if source.duckdb is not None:
        if source.table is not None and source.table.rpartition(".")[2].lower() == table.lower():
            raise _refused(f"{table!r} is the sync's source table: name another table for the results")
        path = Path(source.duckdb).resolve()
    else:
        path = (base_dir / f"{definition.name}.writeback.duckdb").resolve()
    policy.check_path(path, "--write-back")
    return WriteBack(path, table, definition.name)


class WriteBack:
    """A run's ledger copied into ``table`` of the DuckDB file ``path``."""

    def __init__(self, path: Path, table: str, sync: str) -> None:
        self.path, self.table, self.sync = path, table, sync

    def write(self, run: int, ledger: Iterable[LedgerRow]) -> int:
        """Replace run ``run``'s rows with ``ledger`` in one transaction; the number of rows written."""
        import pyarrow as pa  # type: ignore[import-untyped]

        names = [name for name, _ in COLUMNS]
        try:
            con = duckdb.connect(str(self.path), config=DUCKDB_CONFIG)
        except duckdb.Error as exc:
            raise _refused(f"cannot open {self.path.name} to write: {str(exc).splitlines()[0][:300]}") from None
        written = 0
        try:
            columns = ", ".join(f'"{name}" {kind}' for name, kind in COLUMNS)
            con.execute(f'CREATE TABLE IF NOT EXISTS "{self.table}" ({columns})')
            con.execute("BEGIN TRANSACTION")
            con.execute(f'DELETE FROM "{self.table}" WHERE sync = ? AND run = ?', [self.sync, run])
            batch: list[dict[str, object]] = []
            for entry in [*ledger, None]:
                if entry is not None:
                    batch.append({"sync": self.sync, "run": run, **entry.to_dict()})
                if batch and (entry is None or len(batch) >= _ROWS_PER_INSERT):
                    arrow = pa.Table.from_pylist(batch, schema=_schema(pa))
                    con.register("ledger_rows", arrow)
                    con.execute(f'INSERT INTO "{self.table}" SELECT {", ".join(names)} FROM ledger_rows')
                    con.unregister("ledger_rows")
                    written += len(batch)
                    batch = []
            con.execute("COMMIT")
        finally:
            con.close()
        return written


def _schema(pa: Any) -> Any:
    return pa.schema([(name, pa.string() if kind == "VARCHAR" else pa.int64()) for name, kind in COLUMNS])
