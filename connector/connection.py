"""The live :class:`Connection` an action runs against: one token provider, one client, one governor per configuration.

The runtime keeps one Connection per configuration (see :attr:`Connection.fingerprint`) so the token, the throttle
governor and the metadata cache are shared by every action run. What a configuration may say, and how it is checked,
is in :mod:`connector.connection_config`.
"""

from __future__ import annotations

import functools
import os
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from connector import strict_json
from connector.clock import Clock, SystemClock
from connector.connection_config import ConnectionConfig, parse_config
from connector.errors import ConnectionConfigError
from connector.policy import OperatorPolicy

if TYPE_CHECKING:
    from connector.auth import OnToken, TokenProvider
    from connector.client import DataverseClient
    from connector.governor import Governor
    from connector.identity_pool import Identity
    from connector.metadata import MetadataCache
    from connector.transport import RetryPolicy

__all__ = ["Connection"]


@functools.lru_cache(maxsize=4)
def _default_trust(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """What httpx builds for ``verify=True`` (certifi's bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), built once per
    process and per those two variables: loading the bundle takes about 25 ms, and every connection paid it twice on
    its first request (the token endpoint's client and Dataverse's), a tenth of a cold ``write_entities``' start."""
    return httpx.create_ssl_context(trust_env=True)


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """Trust the system store plus ``ca_file``: the same context serves both Dataverse and the token endpoint."""
    if ca_file is None:
        return _default_trust(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionConfigError(
            f"ca_file {ca_file} is not a PEM bundle of certificates ({type(exc).__name__})", field="ca_file"
        ) from None
    return ctx


class Connection:
    """A configured, authenticated link to one Dataverse environment; thread-safe, reuse it for every action.

    Build it with :meth:`from_config` or :meth:`from_file`. ``transport`` replaces the network (tests pass an
    ``httpx.MockTransport``) for both the token endpoint and Dataverse; ``clock`` replaces time.
    """

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        on_token: OnToken | None = None,
    ) -> None:
        self._config = config
        self._clock: Clock = clock or SystemClock()
        self._transport = transport
        self._verify = _ssl_context(config.ca_file)
        identities = [self._identity(each, retry, on_token) for each in config.identities()]
        self._provider: TokenProvider = identities[0].tokens
        self._governor: Governor = identities[0].governor
        if len(identities) > 1:  # an identity pool: see connector.identity_pool
            from connector.identity_pool import PoolGovernor, PoolTokens

            pool = PoolGovernor(identities, clock=self._clock, policy=retry)
            self._governor, self._provider = pool, PoolTokens(pool)
        self._client: DataverseClient | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _identity(self, config: ConnectionConfig, retry: RetryPolicy | None, on_token: OnToken | None) -> Identity:
        """One application user's token provider and governor (shared on Redis per user when the operator says so)."""
        from connector.auth import make_token_provider
        from connector.governor_shared import governor_for
        from connector.identity_pool import Identity

        tokens = make_token_provider(
            config, transport=self._transport, clock=self._clock, verify=self._verify, on_token=on_token, retry=retry
        )
        governor = governor_for(
            organization_url=config.organization_url,
            user=config.client_id,
            clock=self._clock,
            max_parallelism=config.max_parallelism,
            policy=retry,
        )
        return Identity(config.client_id, tokens, governor)

    @classmethod
    def from_config(
        cls,
        data: Mapping[str, Any],
        *,
        base_dir: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        on_token: OnToken | None = None,
        policy: OperatorPolicy | None = None,
    ) -> Connection:
        """Validate ``data`` (relative ``{"file"}`` secrets and ``ca_file`` start at ``base_dir``); connect lazily.

        ``policy`` is the operator's (default: from the environment, preset ``hosted``), never the connection's.

        ``on_token`` is called with every new refresh token of an ``authorization_code`` connection (they rotate on
        each use), for platforms that keep tokens themselves; store it as a secret.
        """
        return cls(
            parse_config(data, base_dir=base_dir, policy=policy),
            transport=transport,
            clock=clock,
            retry=retry,
            on_token=on_token,
        )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        base_dir: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        on_token: OnToken | None = None,
        policy: OperatorPolicy | None = None,
    ) -> Connection:
        """Read a JSON connection file; relative paths inside it start at the file's folder."""
        file = Path(path)
        try:
            data = strict_json.loads(file.read_bytes())
        except OSError as exc:
            raise ConnectionConfigError(
                f"cannot read the connection file {file} ({exc.strerror or type(exc).__name__})"
            ) from None
        except strict_json.StrictJsonError as exc:
            raise ConnectionConfigError(f"the connection file {file} is not valid JSON: {exc}") from None
        return cls.from_config(
            data,
            base_dir=base_dir if base_dir is not None else file.resolve().parent,
            transport=transport,
            clock=clock,
            retry=retry,
            on_token=on_token,
            policy=policy,
        )

    @property
    def config(self) -> ConnectionConfig:
        return self._config

    @property
    def organization_url(self) -> str:
        """``https://host`` of the environment, without a path."""
        return self._config.organization_url

    @property
    def api_url(self) -> str:
        """The Web API root, such as ``https://contoso.crm.dynamics.com/api/data/v9.2``."""
        return self._config.api_url

    @property
    def host(self) -> str:
        """The environment's host (and port), lower-cased: what a page token must name to be followed here."""
        return urlsplit(self._config.api_url).netloc.lower()

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def governor(self) -> Governor:
        """The throttle governor every request of this connection goes through (see :mod:`connector.governor`)."""
        return self._governor

    @property
    def token_provider(self) -> TokenProvider:
        return self._provider

    @property
    def fingerprint(self) -> str:
        """Identifies the configuration (secrets included) so a runtime can reuse one Connection per configuration."""
        return self._config.fingerprint()

    @property
    def metadata(self) -> MetadataCache:
        """The table metadata cache every action on this connection shares (created on first use)."""
        cache: MetadataCache | None = self.__dict__.get("_metadata")
        if cache is None:
            with self._lock:
                cache = self.__dict__.get("_metadata")
                if cache is None:
                    from connector.metadata import MetadataCache

                    cache = MetadataCache(lambda: self.client, clock=self._clock)
                    self.__dict__["_metadata"] = cache
        return cache

    @property
    def client(self) -> DataverseClient:
        """The one :class:`DataverseClient` of this connection, created on first use."""
        if self._closed:
            raise ConnectionConfigError("this connection is closed; create a new one")
        if self._client is None:
            with self._lock:
                if self._closed:
                    raise ConnectionConfigError("this connection is closed; create a new one")
                if self._client is None:
                    from connector.client import DataverseClient

                    self._client = DataverseClient(
                        self._config.api_url,
                        self._provider,
                        transport=self._transport,
                        clock=self._clock,
                        verify=self._verify,
                        timeout_s=self._config.timeout_s,
                        governor=self._governor,
                    )
        return self._client

    def token(self) -> str:
        """The current access token, fetched or refreshed as needed; never log it."""
        return self._provider.token()

    def pool_members(self) -> list[Connection]:
        """One connection per application user of an identity pool (none without a pool), sharing this one's transport
        and clock: for checks that must reach every user, such as ``test_connection``. The caller closes them."""
        configs = self._config.identities()
        if len(configs) == 1:
            return []
        alone = [c.model_copy(update={"additional_identities": ()}) for c in configs]
        return [Connection(c, transport=self._transport, clock=self._clock) for c in alone]

    def close(self) -> None:
        """Close the HTTP connections; the Connection cannot be used afterwards."""
        with self._lock:
            self._closed = True
            if self._client is not None:
                self._client.close()
            self._provider.close()
            self._governor.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Connection(kind={self._config.kind!r}, organization_url={self._config.organization_url!r})"
