"""All state behind one app: metadata, storage, identity, principals and the request log (no HTTP handling here)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

from .context import fmt_dt_now
from .identity import App, Identity
from .model import Table, build_tables
from .storage import Store
from .throttle import Clock
from .webhooks import Webhooks

#: the store lock the running task holds: a ``$batch`` replays its operations through the same handler, inside its turn
_HELD: ContextVar[asyncio.Lock | None] = ContextVar("d365_emulator_store_turn", default=None)


class Emulator:
    """All state behind one app: metadata, storage, identity and the request log."""

    sample_data: bool = False  # --sample-data: the admin reset loads the sample organization again
    sample_seed: int | None = None

    def __init__(
        self,
        *,
        seed: int | None,
        db_path: str | None,
        key_activation_s: float,
        latency_ms: int,
        token_lifetime_s: int,
        admin: bool,
        clock: Callable[[], float] | None,
    ) -> None:
        self.clock = Clock(clock or time.time)  # advanced by POST /_emulator/clock
        self.latency_ms = latency_ms
        self.admin = admin
        self.tables, self.rels = build_tables()
        self.by_set: dict[str, Table] = {t.entity_set: t for t in self.tables.values()}
        self.store = Store(self.tables, self.rels, db_path, self.clock, key_activation_s)
        stable = random.Random(seed if seed is not None else 365)
        # a different stream from `stable`, so generated record ids never repeat the fixed principal ids
        self.rng = random.Random(f"records-{seed}") if seed is not None else random.Random()
        self.identity = Identity(
            tenant_id=str(uuid.UUID(int=stable.getrandbits(128), version=4)),
            clock=self.clock,
            token_lifetime_s=token_lifetime_s,
            rng=self.rng,
            seeded=seed is not None,
        )
        self.organization_id = str(uuid.UUID(int=stable.getrandbits(128), version=4))
        self.webhooks = Webhooks(self)
        self.pooled_apps: list[App] = []  # more application users (admin: POST /_emulator/apps)
        self._setup_principals(stable)
        self.log: deque[dict[str, Any]] = deque(maxlen=100000)
        self.in_flight = 0
        self.user_cache: dict[str, dict[str, Any]] = {}
        # One Web API handler at a time touches the store: they share one SQLite connection, so a second handler
        # running while the first waits would run inside the first one's transaction. Handlers used to be atomic for
        # the event loop instead, which held every other request (its admission, its clock, a held answer due to
        # leave) for as long as a bulk write of 1,000 rows took; with the lock, a long handler may let the loop run.
        self.db_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def store_turn(self) -> AsyncIterator[None]:
        """Hold :attr:`db_lock` for one Web API request (re-entered by the operations of a ``$batch`` it runs)."""
        if _HELD.get() is self.db_lock:
            yield
            return
        async with self.db_lock:
            token = _HELD.set(self.db_lock)
            try:
                yield
            finally:
                _HELD.reset(token)

    # -- principals -------------------------------------------------------------------------------------------------

    def _setup_principals(self, stable: random.Random) -> None:
        from .tls import client_certificate

        def g() -> str:
            return str(uuid.UUID(int=stable.getrandbits(128), version=4))

        idp = self.identity
        self.root_bu = g()
        self.system_user = g()
        apps = {
            "client_credentials": App(g(), g(), "client_credentials", secret=idp.secret()),
            "certificate": App(g(), g(), "certificate"),
            "authorization_code": App(g(), g(), "authorization_code", public=True),
            "managed_identity": App(g(), g(), "managed_identity"),
        }
        idp.user_oid = g()
        idp.identity_header = idp.secret()
        cert_pem, key_pem, der = client_certificate("d365-emulator-client")
        apps["certificate"].cert_public_pem = cert_pem
        import base64
        import hashlib

        apps["certificate"].cert_thumbprint_x5t = (
            base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode().rstrip("=")
        )
        idp.cert_pem, idp.key_pem = cert_pem, key_pem
        for a in apps.values():
            idp.apps[a.client_id] = a
        self.apps_by_kind = apps

    def ensure_principal_rows(self) -> None:
        """Root business unit, SYSTEM user, the application users and the interactive test user."""
        s = self.store
        now = fmt_dt_now(self.clock)
        if not s.exists("businessunit", self.root_bu):
            v = s.next_version()
            s.insert(
                "businessunit",
                {
                    "businessunitid": self.root_bu,
                    "name": "emulator",
                    "createdon": now,
                    "modifiedon": now,
                    "versionnumber": v,
                },
            )
        users: list[tuple[str, str, str | None, str | None]] = [(self.system_user, "SYSTEM", None, None)]
        users += [(a.object_id, f"# {kind} app", a.client_id, a.object_id) for kind, a in self.apps_by_kind.items()]
        users += [(a.object_id, f"# pooled app {n}", a.client_id, a.object_id) for n, a in enumerate(self.pooled_apps)]
        users.append((self.identity.user_oid, "Emulator Test User", None, self.identity.user_oid))
        for uid, name, appid, oid in users:
            if not s.exists("systemuser", uid):
                s.insert(
                    "systemuser",
                    {
                        "systemuserid": uid,
                        "fullname": name,
                        "lastname": name,
                        "applicationid": appid,
                        "azureactivedirectoryobjectid": oid,
                        "accessmode": 4 if appid else 0,
                        "isdisabled": 0,
                        "businessunitid": self.root_bu,
                        "businessunitid__type": "businessunit",
                        "createdon": now,
                        "modifiedon": now,
                        "versionnumber": s.next_version(),
                    },
                )

    def add_application_user(self) -> App:
        """One more app registration with a client secret, bound to its own application user: Dataverse keeps the
        service protection limits per user, so it has a budget of its own (an identity pool's second member)."""
        idp = self.identity
        app = App(idp.guid(), idp.guid(), "client_credentials", secret=idp.secret())
        idp.apps[app.client_id] = app
        self.pooled_apps.append(app)
        self.ensure_principal_rows()
        return app

    def ensure_user(self, app: App | None, oid: str) -> None:
        """Called by the token endpoint; every app and the test user already have systemuser rows."""

    def user_for_claims(self, claims: dict[str, Any]) -> dict[str, Any] | None:
        """The systemuser behind a token: application users by appid, people by Entra object id (cached)."""
        key = f"{claims.get('appid')}|{claims.get('oid')}|{claims.get('idtyp')}"
        u = self.user_cache.get(key)
        if u is not None:
            return u
        if claims.get("idtyp") == "app":
            rows = self.store.query("SELECT * FROM systemuser WHERE applicationid = ?", [claims.get("appid")])
        else:
            rows = self.store.query(
                "SELECT * FROM systemuser WHERE azureactivedirectoryobjectid = ?", [claims.get("oid")]
            )
        if not rows:
            return None
        self.user_cache[key] = rows[0]
        return rows[0]

    # -- connection configs -----------------------------------------------------------------------------------------

    def connection_config(
        self, org: str, kind: str = "client_credentials", ca_file: str | None = None, files_dir: str | None = None
    ) -> dict[str, Any]:
        """A connection file body (see README): the shape ``--connection-out`` writes."""
        tenant = self.identity.tenant_id
        app = self.apps_by_kind[kind]
        cfg: dict[str, Any] = {"kind": kind, "organization_url": org, "tenant_id": tenant}
        if kind != "managed_identity":
            cfg["token_url"] = f"{org}/{tenant}/oauth2/v2.0/token"
        cfg["client_id"] = app.client_id
        if kind == "client_credentials":
            cfg["client_secret"] = app.secret
        elif kind == "certificate":
            import tempfile
            from pathlib import Path

            d = Path(files_dir or tempfile.mkdtemp(prefix="d365-emulator-"))
            d.mkdir(parents=True, exist_ok=True)
            cert_path, key_path = d / "client-cert.pem", d / "client-key.pem"
            cert_path.write_bytes(self.identity.cert_pem)
            key_path.write_bytes(self.identity.key_pem)
            key_path.chmod(0o600)
            cfg["certificate_file"] = str(cert_path)
            cfg["private_key_file"] = str(key_path)
        elif kind == "authorization_code":
            cfg["authorize_url"] = f"{org}/{tenant}/oauth2/v2.0/authorize"
            cfg["redirect_port"] = 0
            cfg["scopes"] = [f"{org}/user_impersonation", "offline_access"]
        elif kind == "managed_identity":
            cfg["identity_endpoint"] = f"{org}/metadata/identity/oauth2/token"
            cfg["identity_style"] = "imds"
            cfg["identity_header"] = self.identity.identity_header
        if ca_file:
            cfg["ca_file"] = ca_file
        if org.startswith("http://"):
            cfg["allow_insecure_loopback"] = True
        return cfg
