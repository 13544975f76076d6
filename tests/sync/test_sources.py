"""Source readers: every kind streams batches in source order; memory stays bounded; hosted DuckDB is fenced."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connector.errors import ConnectionConfigError, InputError
from connector.policy import OperatorPolicy
from connector.sync.definition import SourceSpec
from connector.sync.sources import read_rows

LOCAL = OperatorPolicy(preset="local")
ROWS = [{"number": "00123", "name": "Contoso", "size": 10}, {"number": "A-2", "name": "Fabrikam", "size": 20}]


def _all(spec: SourceSpec, base: Path, policy: OperatorPolicy = LOCAL, **kw: Any) -> list[list[dict[str, Any]]]:
    return list(read_rows(spec, policy=policy, base_dir=base, **kw))


def _csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    lines = [",".join(rows[0])] + [",".join(str(v) for v in row.values()) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_is_read_as_text_so_leading_zeros_survive(tmp_path: Path) -> None:
    _csv(tmp_path / "c.csv", ROWS)
    assert _all(SourceSpec(path="c.csv"), tmp_path) == [[{k: str(v) for k, v in r.items()} for r in ROWS]]


def test_a_glob_of_parquet_files_streams_in_batches_in_order(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for part in range(3):
        rows = [{"n": part * 10 + i, "label": f"r{part * 10 + i}"} for i in range(10)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / f"part{part}.parquet")
    batches = _all(SourceSpec(path="data/*.parquet"), tmp_path, batch_rows=7)
    assert all(len(b) <= 7 for b in batches) and len(batches) >= 5
    assert [row["n"] for b in batches for row in b] == list(range(30))


def test_json_lines_keep_their_types_and_sql_over_path_reads_the_view_source(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n", encoding="utf-8")
    assert _all(SourceSpec(path="p.jsonl"), tmp_path) == [ROWS]
    spec = SourceSpec(path="p.jsonl", sql="SELECT upper(name) AS name, size * 2 AS size FROM source ORDER BY size")
    assert _all(spec, tmp_path) == [[{"name": "CONTOSO", "size": 20}, {"name": "FABRIKAM", "size": 40}]]


def test_a_duckdb_table_and_sql_in_a_duckdb_file(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE TABLE companies AS SELECT * FROM (VALUES ('A-1', 'Contoso'), ('A-2', 'Fabrikam')) t(n, name)")
    con.close()
    assert _all(SourceSpec(duckdb="w.duckdb", table="companies"), tmp_path) == [
        [{"n": "A-1", "name": "Contoso"}, {"n": "A-2", "name": "Fabrikam"}]
    ]
    spec = SourceSpec(duckdb="w.duckdb", sql="SELECT n FROM companies WHERE name = 'Fabrikam'")
    assert _all(spec, tmp_path) == [[{"n": "A-2"}]]


def test_sql_alone_reads_files_through_duckdb_functions(tmp_path: Path) -> None:
    _csv(tmp_path / "c.csv", ROWS)
    spec = SourceSpec(sql=f"SELECT name FROM read_csv('{tmp_path / 'c.csv'}') ORDER BY name DESC")
    assert _all(spec, tmp_path) == [[{"name": "Fabrikam"}, {"name": "Contoso"}]]


@pytest.mark.parametrize(
    "sql", ["COPY (SELECT 1) TO 'out.csv'", "SELECT 1; SELECT 2", "ATTACH 'x.duckdb' AS x", "SET threads = 1"]
)
def test_a_source_query_is_one_select(tmp_path: Path, sql: str) -> None:
    with pytest.raises(InputError, match=r"\$\.source\.sql: must be one SELECT statement"):
        _all(SourceSpec(sql=sql), tmp_path)
    assert not (tmp_path / "out.csv").exists()


def test_unreadable_sources_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\$\.source\.path: .*No files found"):
        _all(SourceSpec(path="missing/*.csv"), tmp_path)
    with pytest.raises(InputError, match=r"\$\.source\.duckdb: no DuckDB database"):
        _all(SourceSpec(duckdb="none.duckdb", table="t"), tmp_path)
    with pytest.raises(InputError, match=r"\$\.source\.sql: is not valid SQL"):
        _all(SourceSpec(sql="SELEC nothing"), tmp_path)
    with pytest.raises(InputError, match=r"\$\.source\.sql: DuckDB could not read it: Catalog Error"):
        _all(SourceSpec(sql="SELECT * FROM nosuch"), tmp_path)


def _sqlite(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE people (email TEXT, age INTEGER)")
    con.executemany("INSERT INTO people VALUES (?, ?)", [(f"p{i}@example.com", i) for i in range(25)])
    con.commit()
    con.close()
    return path


def test_sqlalchemy_streams_a_table_or_a_query_in_partitions(tmp_path: Path) -> None:
    url = f"sqlite:///{_sqlite(tmp_path / 'w.db')}"
    batches = _all(SourceSpec(url=url, table="people"), tmp_path, batch_rows=10)
    assert [len(b) for b in batches] == [10, 10, 5]
    assert batches[2][-1] == {"email": "p24@example.com", "age": 24}
    spec = SourceSpec(url=url, sql="SELECT email FROM people WHERE age > 22 ORDER BY age")
    assert _all(spec, tmp_path) == [[{"email": "p23@example.com"}, {"email": "p24@example.com"}]]


def test_a_sqlite_source_is_read_only_and_hosted_may_not_attach(tmp_path: Path) -> None:
    url = f"sqlite:///{_sqlite(tmp_path / 'w.db')}"
    with pytest.raises(InputError, match=r"\$\.source\.sql: the database refused it: .*readonly"):
        _all(SourceSpec(url=url, sql="DELETE FROM people"), tmp_path)
    hosted = OperatorPolicy(preset="hosted", allowed_paths=(tmp_path.resolve(),))
    attach = SourceSpec(url=url, sql="ATTACH DATABASE '/tmp/elsewhere.db' AS x")
    with pytest.raises(InputError, match="too many attached databases"):
        _all(attach, tmp_path, policy=hosted)
    with pytest.raises(InputError, match=r"\$\.source\.table: the database has no table"):
        _all(SourceSpec(url=url, table="nobody"), tmp_path)
    with pytest.raises(InputError, match=r"\$\.source\.url: no SQLite database"):
        _all(SourceSpec(url=f"sqlite:///{tmp_path / 'none.db'}", table="t"), tmp_path)


def test_json_lines_on_stdin_are_read_strictly(tmp_path: Path) -> None:
    text = "\n".join(json.dumps(r) for r in ROWS * 3) + "\n\n"
    batches = _all(SourceSpec(stdin=True), tmp_path, batch_rows=4, stdin=io.BytesIO(text.encode()))
    assert [len(b) for b in batches] == [4, 2] and batches[1][-1] == ROWS[1]
    for bad, words in (
        ('{"a": NaN}\n', "line 1 is not valid JSON"),
        ('{"a": 1}\n[1]\n', "line 2 is not a JSON object"),
    ):
        with pytest.raises(InputError, match=words):
            _all(SourceSpec(stdin=True), tmp_path, stdin=io.BytesIO(bad.encode()))
    with pytest.raises(InputError, match="no standard input"):
        _all(SourceSpec(stdin=True), tmp_path)


# -- hosted: DuckDB is fenced into the operator's folders -----------------------------------------------------------
@pytest.fixture
def fenced(tmp_path: Path) -> tuple[Path, Path, OperatorPolicy]:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    _csv(inside / "ok.csv", ROWS)
    _csv(outside / "secret.csv", ROWS)
    return inside, outside, OperatorPolicy(preset="hosted", allowed_paths=(inside.resolve(),))


def test_hosted_reads_inside_the_operators_folders(fenced: tuple[Path, Path, OperatorPolicy]) -> None:
    inside, _, policy = fenced
    assert len(_all(SourceSpec(path="ok.csv"), inside, policy)[0]) == 2
    assert len(_all(SourceSpec(sql=f"SELECT * FROM read_csv('{inside}/ok.csv')"), inside, policy)[0]) == 2


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('{outside}/secret.csv')",
        "SELECT * FROM read_csv('{inside}/../out/secret.csv')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_csv('https://example.com/x.csv')",
    ],
)
def test_hosted_sql_cannot_reach_outside(fenced: tuple[Path, Path, OperatorPolicy], sql: str) -> None:
    inside, outside, policy = fenced
    with pytest.raises(InputError, match="Permission Error"):
        _all(SourceSpec(sql=sql.format(inside=inside, outside=outside)), inside, policy)


def test_hosted_duckdb_file_outside_is_refused_before_it_is_opened(fenced: tuple[Path, Path, OperatorPolicy]) -> None:
    inside, outside, policy = fenced
    duckdb.connect(str(outside / "w.duckdb")).close()
    with pytest.raises(ConnectionConfigError, match="D365_ALLOWED_PATHS"):
        _all(SourceSpec(duckdb=str(outside / "w.duckdb"), table="t"), inside, policy)


# -- memory: a 200,000-row CSV costs a batch, not the file ----------------------------------------------------------
_MEASURE = """
import resource, sys, tracemalloc
from pathlib import Path
from connector.policy import OperatorPolicy
from connector.sync.definition import SourceSpec
from connector.sync.sources import read_rows
path = Path(sys.argv[1])
rows = int(sys.argv[2])
with path.open("w") as f:
    f.write("id,email,name,city,amount\\n")
    for i in range(rows):
        f.write(f"{i},person{i}@example.com,Person number {i},City {i % 97},{i * 1.25:.2f}\\n")
tracemalloc.start()
seen = 0
for batch in read_rows(SourceSpec(path=str(path)), policy=OperatorPolicy(preset="local"), base_dir=path.parent,
                       batch_rows=5000):
    seen += len(batch)
assert seen == rows, seen
print(tracemalloc.get_traced_memory()[1], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _measure(path: Path, rows: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(rows)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    python_peak, rss_peak = map(int, out.stdout.split())
    return python_peak, rss_peak


def test_memory_is_bounded_by_the_batch_not_the_source(tmp_path: Path) -> None:
    small_py, small_rss = _measure(tmp_path / "small.csv", 20_000)
    large_py, large_rss = _measure(tmp_path / "large.csv", 200_000)
    assert (tmp_path / "large.csv").stat().st_size > 10_000_000
    # Ten times the rows, and Python's peak (one batch of dicts) stays within 1.2x: nothing accumulates.
    assert large_py <= small_py * 1.2, (small_py, large_py)
    # DuckDB's own buffers grow towards a plateau (measured: 107 MB at 20,000 rows, 132 MB at 200,000, 262 MB at
    # 2,000,000, 281 MB at 4,000,000); the 200,000 rows held as dicts alone would add some 200 MB.
    assert large_rss <= small_rss * 1.5, (small_rss, large_rss)


def test_hosted_files_outside_are_refused_by_duckdb_itself(fenced: tuple[Path, Path, OperatorPolicy]) -> None:
    """A spec that did not come through load_definition (which checks paths first) still meets the fence."""
    inside, outside, policy = fenced
    with pytest.raises(InputError, match=r"\$\.source\.path: cannot open it: Permission Error"):
        _all(SourceSpec(path=str(outside / "secret.csv")), inside, policy)
    duckdb.connect(str(inside / "w.duckdb")).execute("CREATE TABLE t AS SELECT 1 AS a").close()
    assert _all(SourceSpec(duckdb="w.duckdb", table="t"), inside, policy) == [[{"a": 1}]]
