"""A hosted connector with its sync state in PostgreSQL, through the CLI: refused until the operator's environment lists
the database in D365_ALLOWED_STATE_URLS, then used; the URL's password shows in no output either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

D365 = str(Path(sys.executable).parent / "d365")
PASSWORD = "s3cret-pw"  # the test cluster trusts loopback: any password connects, and none may be shown


def test_a_hosted_postgresql_state_needs_the_operators_listing(tmp_path: Path, postgres_url: str) -> None:
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    database = f"hosted_{os.getpid()}"
    with admin.connect() as db:
        db.execute(sa.text(f"CREATE DATABASE {database}"))
    admin.dispose()
    listed = sa.make_url(postgres_url).set(database=database)
    state = listed.set(password=PASSWORD).render_as_string(hide_password=False)
    definition = {
        "name": "accounts",
        "source": {"path": "companies.csv"},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [{"source": "num", "target": "accountnumber"}],
        "state": state,
    }
    (tmp_path / "sync.json").write_text(json.dumps(definition), encoding="utf-8")
    env = {**os.environ, "D365_POLICY": "hosted", "D365_ALLOWED_PATHS": str(tmp_path)}
    env.pop("D365_ALLOWED_STATE_URLS", None)
    status = [D365, "sync", "status", str(tmp_path / "sync.json")]

    refused = subprocess.run(status, env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "state names a postgresql database" in refused.stderr and "D365_ALLOWED_STATE_URLS=" in refused.stderr
    assert PASSWORD not in refused.stdout + refused.stderr

    env["D365_ALLOWED_STATE_URLS"] = listed.set(drivername="postgresql", username=None).render_as_string()
    allowed = subprocess.run(status, env=env, capture_output=True, text=True)
    assert allowed.returncode == 0 and allowed.stdout == "", allowed.stderr
    assert PASSWORD not in allowed.stdout + allowed.stderr
    engine = sa.create_engine(listed)
    with engine.connect() as db:  # the store was created where the operator allowed it
        assert db.execute(sa.text("SELECT value FROM sync_schema WHERE name = 'version'")).scalar_one() == "2"
    engine.dispose()
