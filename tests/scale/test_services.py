"""The test servers answer: Redis runs Lua with ``TIME`` (the shared governor needs both), PostgreSQL takes SQL
through SQLAlchemy with psycopg 3 (the state store's driver)."""

from __future__ import annotations

import redis
import sqlalchemy


def test_redis_runs_lua_with_server_time(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    seconds = r.eval("local t = redis.call('TIME') return tonumber(t[1])", 0)
    assert int(seconds) > 1_700_000_000  # type: ignore[arg-type]
    r.close()


def test_postgres_takes_sql_through_psycopg(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("select 40 + 2")).scalar_one() == 42
        assert engine.dialect.driver == "psycopg"
    engine.dispose()
