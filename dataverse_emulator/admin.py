"""The test-only admin surface under ``/_emulator/`` (seed rows and metadata, request log, reset, clock)."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import currency, sampledata, schema
from .bulk import ensure_message_rows
from .context import fmt_dt_now
from .dispatch import WebApi
from .emulator import Emulator
from .errors import DataverseError
from .message_handlers import ensure_sample_api
from .records import (
    computed,
    convert,
)
from .storage import type_col


class Admin:
    """Test-only endpoints under ``/_emulator/``; never used by real clients."""

    def __init__(self, emu: Emulator, api: WebApi) -> None:
        self.emu = emu
        self.api = api

    async def seed(self, request: Request) -> Response:
        """``{"table": "account", "rows": [{...}, ...]}``: bulk insert in one transaction, ids generated if absent."""
        body = await request.json()
        name = body.get("table", "")
        table = self.emu.tables.get(name) or self.emu.by_set.get(name)
        if table is None:
            return JSONResponse({"error": f"unknown table {name!r}"}, 400)
        now = fmt_dt_now(self.emu.clock)
        rows = []
        ids = []
        for r in body.get("rows", []):
            row: dict[str, Any] = {}
            for k, v in r.items():
                a = table.attributes.get(k)
                if a is None:
                    return JSONResponse({"error": f"unknown column {k!r}"}, 400)
                if a.is_lookup:
                    if isinstance(v, dict):
                        row[k], row[type_col(k)] = str(v["id"]).lower(), v["table"]
                    else:
                        row[k], row[type_col(k)] = (str(v).lower() if v else None), (a.targets[0] if v else None)
                elif a.is_primary_id:
                    row[k] = str(v).lower()
                else:
                    try:
                        row[k] = convert(table, a, v, table.entity_set)
                    except DataverseError as e:
                        return JSONResponse({"error": f"{k}: {e.message}"}, 400)
            computed(table, row)
            row.setdefault(table.primary_id, str(uuid.UUID(int=self.emu.rng.getrandbits(128), version=4)))
            row.setdefault("createdon", now)
            row.setdefault("modifiedon", now)
            row["versionnumber"] = self.emu.store.next_version()
            if "ownerid" in table.attributes and row.get("ownerid") is None:
                row["ownerid"], row["ownerid__type"] = self.emu.system_user, "systemuser"
                row["owninguser"], row["owninguser__type"] = self.emu.system_user, "systemuser"
            if "statecode" in table.attributes:
                row.setdefault("statecode", 0)
                if row.get("statuscode") is None:
                    self.api.fix_status(table, row, row)
            rows.append(row)
            ids.append(row[table.primary_id])
        try:
            n = self.emu.store.insert_many(table.logical_name, rows)
        except Exception as e:
            return JSONResponse({"error": str(e)}, 400)
        return JSONResponse({"inserted": n, "ids": ids})

    async def seed_metadata(self, request: Request) -> Response:
        """``POST /_emulator/metadata/seed {"tables": [...]}``: bulk preload of table and column definitions."""
        body = await request.json()
        try:
            with self.emu.store.transaction():
                created = schema.do_seed(self.emu, body)
        except DataverseError as e:
            return JSONResponse({"error": e.message}, 400)
        return JSONResponse({"tables": created})

    async def requests(self, request: Request) -> Response:
        """``GET /_emulator/requests``: the request log and the current in-flight count."""
        return JSONResponse({"requests": list(self.emu.log), "in_flight": self.emu.in_flight})

    async def reset(self, request: Request) -> Response:
        """``POST /_emulator/reset``: drop all rows, keys, the log and the throttle windows; principals recreated."""
        self.emu.store.reset()
        self.emu.log.clear()
        self.emu.throttle.reset()
        self.emu.user_cache.clear()
        bootstrap(self.emu)
        if self.emu.sample_data:
            sampledata.load(self.emu, self.emu.sample_seed)
        return JSONResponse({"reset": True})

    async def clock(self, request: Request) -> Response:
        """``POST /_emulator/clock {\"advance_s\": N}`` moves emulated time on (windows, Retry-After, key
        activation, token expiry) so tests of waits never sleep; ``GET`` reads it."""
        clock = self.emu.clock
        if request.method == "POST":
            body = await request.json()
            try:
                clock.advance(float(body.get("advance_s", 0)))
            except (TypeError, ValueError) as e:
                return JSONResponse({"error": str(e)}, 400)
        return JSONResponse({"now": clock(), "offset_s": clock.offset})

    async def add_app(self, request: Request) -> Response:
        """``POST /_emulator/apps``: one more app registration (client secret) with its own application user and
        service protection budget; answers ``{"client_id", "client_secret"}``."""
        app = self.emu.add_application_user()
        return JSONResponse({"client_id": app.client_id, "client_secret": app.secret})

    async def clear_log(self, request: Request) -> Response:
        """``DELETE /_emulator/requests``: empty the request log only."""
        self.emu.log.clear()
        return JSONResponse({"cleared": True})


def bootstrap(emu: Emulator) -> None:
    """The rows every organization starts with: webhook and message catalogue rows, then the principals."""
    emu.webhooks.ensure_rows()
    ensure_message_rows(emu.store, emu.tables)
    ensure_sample_api(emu.store, emu.system_user)
    currency.ensure_base_currency(emu.store, fmt_dt_now(emu.clock))
    emu.ensure_principal_rows()
