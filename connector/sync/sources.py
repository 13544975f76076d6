"""Source rows for a sync, streamed in batches in source order: files, DuckDB, SQL, any SQLAlchemy database, stdin.

Files and DuckDB databases are read by an embedded, in-memory DuckDB using only the readers built into the wheel (CSV,
Parquet, JSON): extension auto-install and auto-load are off, so a run never downloads code. Results leave DuckDB as
Arrow record batches of ``batch_rows`` rows, so a 10 GB Parquet file costs one batch of memory, not ten gigabytes.

CSV is read as text (``all_varchar``): type sniffing would turn an account number ``00123`` into 123 before the mapping
sees it; the mapping coerces text against the target column's metadata instead (connector.sync.mapping).

Under the ``hosted`` policy DuckDB itself is the fence: ``allowed_directories`` lists the operator's folders,
``enable_external_access`` goes off and ``lock_configuration`` on, so a path written into the SQL cannot reach
elsewhere and no statement can give that back. Every query must be one SELECT, so nothing is ever written (DuckDB
would otherwise ``COPY ... TO`` an allowed folder). A SQLAlchemy source is read through SQLAlchemy with a server-side
cursor (``yield_per``); a SQLite one is opened read-only and may not ``ATTACH`` other files.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from connector.errors import InputError, InputProblem, preview
from connector.policy import OperatorPolicy
from connector.strict_json import StrictJsonError
from connector.strict_json import loads as strict_loads
from connector.sync.definition import SourceSpec, file_format

__all__ = ["DUCKDB_CONFIG", "read_rows"]

Batch = list[dict[str, Any]]

#: No extension is installed or loaded behind our back: only the readers compiled into the wheel (CSV, Parquet, JSON).
DUCKDB_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}
_READERS = {
    "csv": "read_csv({path}, all_varchar = true)",
    "parquet": "read_parquet({path})",
    "jsonl": "read_json({path}, format = 'newline_delimited')",
}


def _refused(field: str, message: str) -> InputError:
    return InputError([InputProblem(f"$.source.{field}", message)])


def read_rows(
    spec: SourceSpec,
    *,
    policy: OperatorPolicy,
    base_dir: Path,
    batch_rows: int = 10_000,
    stdin: BinaryIO | None = None,
) -> Iterator[Batch]:
    """The source's rows as dicts (column name -> value), ``batch_rows`` at a time, in source order.

    Paths in ``spec`` are those :func:`~connector.sync.definition.load_definition` anchored (relative ones are taken
    from ``base_dir``). Nothing is read before the first ``next()``; a source that cannot be read raises
    :class:`InputError` naming the source field.
    """
    if spec.kind == "stdin":
        if stdin is None:
            raise _refused("stdin", "this run has no standard input to read: pipe JSON lines in, or name a file")
        yield from _json_lines(stdin, batch_rows)
    elif spec.kind == "url":
        yield from _sqlalchemy(spec, policy, batch_rows)
    else:
        yield from _duckdb(spec, policy, base_dir, batch_rows)


# -- DuckDB ---------------------------------------------------------------------------------------------------------
def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _duckdb(spec: SourceSpec, policy: OperatorPolicy, base_dir: Path, batch_rows: int) -> Iterator[Batch]:
    con = duckdb.connect(":memory:", config=DUCKDB_CONFIG)
    try:
        con.execute("SET enable_progress_bar = false")  # DuckDB would draw over our progress and into --json output
        _fence(con, policy)
        _prepare(con, spec, policy, base_dir)
        query = _query(spec)
        field = "sql" if spec.sql is not None else "table" if spec.table is not None else "path"
        if spec.sql is not None:
            _one_select(spec.sql)
        try:
            reader = con.sql(query).to_arrow_reader(batch_rows)  # fetch_record_batch in DuckDB 1.x
            for batch in reader:
                if batch.num_rows:
                    yield batch.to_pylist()
        except duckdb.Error as exc:
            raise _refused(field, f"DuckDB could not read it: {_first_line(exc)}") from None
    finally:
        con.close()


def _prepare(con: duckdb.DuckDBPyConnection, spec: SourceSpec, policy: OperatorPolicy, base_dir: Path) -> None:
    """Attach the database read-only, or define the view ``source`` over the files; both behind the fence."""
    try:
        if spec.duckdb is not None:
            path = _anchor(spec.duckdb, base_dir)
            policy.check_path(path, "source.duckdb")  # the fence would refuse it too, with a less helpful message
            if not path.is_file():
                raise _refused("duckdb", f"no DuckDB database at {preview(str(path))}: check the path")
            con.execute(f"ATTACH {_quote(str(path))} AS src (READ_ONLY)")
            con.execute("USE src")
        elif spec.path is not None:
            fmt = spec.format or file_format(spec.path) or "csv"
            reader = _READERS[fmt].format(path=_quote(str(_anchor(spec.path, base_dir))))
            con.execute(f"CREATE VIEW source AS SELECT * FROM {reader}")
    except duckdb.Error as exc:
        raise _refused("duckdb" if spec.duckdb else "path", f"cannot open it: {_first_line(exc)}") from None


def _anchor(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _query(spec: SourceSpec) -> str:
    if spec.sql is not None:
        return spec.sql
    if spec.table is not None:
        return "SELECT * FROM " + ".".join(f'"{part}"' for part in spec.table.split("."))
    return "SELECT * FROM source"


def _fence(con: duckdb.DuckDBPyConnection, policy: OperatorPolicy) -> None:
    """In ``hosted``: DuckDB may open only the operator's folders, and the setting cannot be changed back."""
    if policy.preset != "hosted":
        return
    folders = ", ".join(_quote(f"{folder}/") for folder in policy.allowed_paths)
    con.execute(f"SET allowed_directories = [{folders}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _one_select(query: str) -> None:
    """One SELECT statement: a source query reads; ``COPY``, ``ATTACH``, ``SET`` or a second statement are refused."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise _refused("sql", f"is not valid SQL: {_first_line(exc)}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(s.type.name for s in statements) or "nothing"
        raise _refused("sql", f"must be one SELECT statement (found {kinds}): a sync source only reads")


def _first_line(exc: BaseException) -> str:
    """The first line of a reader's message (DuckDB adds a caret drawing below it), at most 300 characters."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# -- SQLAlchemy -----------------------------------------------------------------------------------------------------
def _sqlalchemy(spec: SourceSpec, policy: OperatorPolicy, batch_rows: int) -> Iterator[Batch]:
    url = sa.engine.make_url(spec.url or "")
    engine = _engine(url, policy)
    try:
        with engine.connect() as conn:
            statement: Any = sa.text(spec.sql) if spec.sql is not None else _table_select(conn, spec.table or "")
            result = conn.execution_options(yield_per=batch_rows).execute(statement)
            for partition in result.mappings().partitions(batch_rows):
                yield [dict(row) for row in partition]
    except SQLAlchemyError as exc:
        field = "sql" if spec.sql is not None else "table"
        # the driver's own message only: SQLAlchemy's text repeats the statement, never the URL's password
        reason = _first_line(getattr(exc, "orig", None) or exc)
        raise _refused(field, f"the database refused it: {reason}") from None
    finally:
        engine.dispose()


def _engine(url: sa.engine.URL, policy: OperatorPolicy) -> sa.engine.Engine:
    """An engine; a SQLite file opened read-only and, in ``hosted``, unable to attach other files."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        try:
            return sa.create_engine(url)
        except (SQLAlchemyError, ImportError) as exc:
            raise _refused("url", f"cannot use it: {_first_line(exc)} (is the database driver installed?)") from None
    database = Path(url.database)
    if not database.is_file():
        raise _refused("url", f"no SQLite database at {preview(str(database))}: check the path")
    hosted = policy.preset == "hosted"

    def connect() -> sqlite3.Connection:
        raw = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
        if hosted:
            raw.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        return raw

    return sa.create_engine("sqlite://", creator=connect)


def _table_select(conn: sa.Connection, name: str) -> sa.Select[Any]:
    schema, _, table = name.rpartition(".")
    try:
        reflected = sa.Table(table, sa.MetaData(), schema=schema or None, autoload_with=conn)
    except sa.exc.NoSuchTableError:
        raise _refused("table", f"the database has no table {preview(name)}: check the name") from None
    return sa.select(reflected)


# -- stdin ------------------------------------------------------------------------------------------------------------
def _json_lines(stream: BinaryIO, batch_rows: int) -> Iterator[Batch]:
    """One JSON object per line, read with the strict reader; a bad line names its number (blank lines skipped)."""
    batch: Batch = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            row = strict_loads(line)
        except StrictJsonError as exc:
            raise _refused("stdin", f"line {number} is not valid JSON: {exc.reason}") from None
        if not isinstance(row, dict):
            raise _refused("stdin", f"line {number} is not a JSON object: give one object per line")
        batch.append(row)
        if len(batch) >= batch_rows:
            yield batch
            batch = []
    if batch:
        yield batch
