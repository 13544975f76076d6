"""Dataverse webhooks: verify a delivery, flatten its RemoteExecutionContext, deduplicate, and register the endpoint.

Why this lives in ``connector/`` and not in the trigger module: a platform that mounts the trigger in its own server,
the ``d365 webhook serve`` command and the hook implementations all need the same verification, parsing and
registration, and the hook module stays a thin adapter (as the action modules are).

What Dataverse sends (``use-webhooks.md`` in MicrosoftDocs/powerapps-docs): a POST whose body is the WCF
DataContract JSON of ``RemoteExecutionContext`` (collections as ``[{"key": .., "value": ..}]``, typed values with a
``__type``, dates as ``/Date(ms)/``), the headers ``x-ms-dynamics-organization``, ``x-ms-dynamics-entity-name``,
``x-ms-dynamics-request-name``, ``x-ms-correlation-request-id`` and, above 256 KB, ``x-ms-dynamics-msg-size-exceeded``
with ``ParentContext``, ``InputParameters`` and both image collections removed. Only the status code of our answer
matters to Dataverse: 502/503/504 earn one more attempt, anything else non-2xx is a failure (and for a synchronous
step, fails the user's operation), so a delivery we cannot use gets a 4xx that names the reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import quoteattr

from connector.errors import (
    DataverseApiError,
    NotFoundError,
    WebhookError,
    WebhookPayloadError,
    WebhookVerificationError,
)
from connector.odata import entity_id, quote_string

if TYPE_CHECKING:
    from connector.connection import Connection, Secret

log = logging.getLogger("connector.webhooks")

SIZE_EXCEEDED_HEADER = "x-ms-dynamics-msg-size-exceeded"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_DEDUPE_CAPACITY = 10_000
#: ``serviceendpoint.contract`` 8 is Webhook; ``authtype`` 4 WebhookKey, 5 HttpHeader, 6 HttpQueryString.
CONTRACT_WEBHOOK = 8
AUTH_TYPES = {"webhook_key": 4, "http_header": 5, "http_query_string": 6}
MESSAGE_FORMAT_JSON = 2
STAGE_POST_OPERATION = 40
#: Messages whose image comes from a request property other than ``Target`` (register-plug-in.md).
IMAGE_PROPERTY = {"SetState": "EntityMoniker", "SetStateDynamicEntity": "EntityMoniker"}
TAG_PREFIX = "d365-connector webhook"

_MODES: dict[Any, str] = {0: "synchronous", 1: "asynchronous"}
_DATE_RE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


# =====================================================================================================================
# The request as the trigger sees it


@dataclass(frozen=True)
class WebhookRequest:
    """One HTTP delivery, independent of the server that received it (ASGI app, a platform, a test).

    Header names are kept lower-case, so lookups do not depend on how the sender spelt them.
    """

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes

    @classmethod
    def build(cls, method: str, url: str, headers: Iterable[tuple[str, str]] | Mapping[str, str], body: bytes) -> Any:
        items = headers.items() if isinstance(headers, Mapping) else headers
        return cls(method.upper(), url, {k.lower(): v for k, v in items}, body)

    @property
    def query(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k, v in parse_qsl(urlsplit(self.url).query, keep_blank_values=True):
            out.setdefault(k, []).append(v)
        return out

    def __repr__(self) -> str:  # the URL may carry ?code=<secret>: never show it
        return f"WebhookRequest({self.method} {urlsplit(self.url).path}, {len(self.body)} bytes)"


# =====================================================================================================================
# Configuration


@dataclass(frozen=True)
class WebhookConfig:
    """A validated trigger configuration (``schemas/triggers/webhook.config.json``); the secret is a ``Secret``."""

    table: str
    messages: tuple[str, ...]
    authentication: str
    auth_name: str | None
    secret: Secret | None = field(repr=False)
    filtering_attributes: tuple[str, ...]
    pre_image: tuple[str, ...] | None
    post_image: tuple[str, ...] | None
    mode: str
    max_body_bytes: int
    dedupe_capacity: int
    dedupe_sqlite_path: str | None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> WebhookConfig:
        """Read a configuration the runtime already validated against its schema; resolves the secret."""
        from connector.connection import resolve_secret

        auth = str(data.get("authentication", "webhook_key"))
        secret = None
        if auth != "none":
            try:
                secret = resolve_secret(data.get("secret"), "secret", base_dir)
            except WebhookError:
                raise
            except Exception as exc:  # ConnectionConfigError: same message, but this is the trigger's setup
                # 500: the receiver's own setup is broken (an unset variable, an unreadable file), not the delivery
                raise WebhookError(f"trigger configuration: {getattr(exc, 'message', exc)}", status_code=500) from None

        def image(key: str) -> tuple[str, ...] | None:
            value = data.get(key)
            if value is None or value is False:
                return None
            if value is True:
                return ()
            return tuple(str(v) for v in value)

        return cls(
            table=str(data["table"]),
            messages=tuple(data.get("messages", ("Create", "Update", "Delete"))),
            authentication=auth,
            auth_name=data.get("auth_name"),
            secret=secret,
            filtering_attributes=tuple(data.get("filtering_attributes", ())),
            pre_image=image("pre_image"),
            post_image=image("post_image"),
            mode=str(data.get("mode", "asynchronous")),
            max_body_bytes=int(data.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
            dedupe_capacity=int(data.get("dedupe_capacity", DEFAULT_DEDUPE_CAPACITY)),
            dedupe_sqlite_path=data.get("dedupe_sqlite_path"),
        )


# =====================================================================================================================
# Verification


def _matches(given: str | None, expected: Secret) -> bool:
    """Constant-time comparison; also called for a missing value so timing does not tell missing from wrong."""
    return hmac.compare_digest((given or "").encode(), expected.reveal().encode()) and given is not None


def verify(request: WebhookRequest, config: WebhookConfig) -> None:
    """Raise :class:`WebhookVerificationError` (401) unless the delivery carries the secret where it was registered.

    ``webhook_key`` is ``?code=``; ``http_header`` a header named ``auth_name``; ``http_query_string`` a query
    parameter named ``auth_name``. A secret sent anywhere else does not count: the registration puts it in one place
    only, so finding it elsewhere means the sender is not the registration.
    """
    if config.authentication == "none" or config.secret is None:
        return
    if config.authentication == "webhook_key":
        values = request.query.get("code", [])
        where = "the code query parameter"
    elif config.authentication == "http_query_string":
        values = request.query.get(str(config.auth_name), [])
        where = f"the {config.auth_name} query parameter"
    else:
        header = request.headers.get(str(config.auth_name).lower())
        values = [] if header is None else [header]
        where = f"the {config.auth_name} header"
    given = values[0] if len(values) == 1 else None
    if not _matches(given, config.secret):
        state = "missing" if not values else "wrong"
        raise WebhookVerificationError(
            f"webhook delivery refused: the secret in {where} is {state}; check that the serviceendpoint's "
            "authentication matches the trigger configuration",
            status_code=401,
        )


# =====================================================================================================================
# Parsing RemoteExecutionContext


def parse_date(value: str) -> str | None:
    """``/Date(1506409448000-0700)/`` as ISO 8601 UTC; the offset is informational (the ms are already UTC)."""
    m = _DATE_RE.match(value)
    if not m:
        return None
    instant = dt.datetime.fromtimestamp(int(m.group(1)) / 1000, dt.UTC)
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _type_name(value: Mapping[str, Any]) -> str:
    return str(value.get("__type", "")).split(":", 1)[0]


def _is_entity(value: Mapping[str, Any]) -> bool:
    return "Attributes" in value and "LogicalName" in value


def _is_reference(value: Mapping[str, Any]) -> bool:
    return "LogicalName" in value and "Id" in value and "Attributes" not in value


def plain(value: Any) -> Any:
    """A WCF-typed value as plain JSON.

    EntityReference -> ``{"table", "id", "name"}``; OptionSetValue and Money -> their number; AliasedValue -> its
    value; OptionSetValueCollection -> a list; EntityCollection -> a list of flat entities; an Entity -> its
    attributes; ``/Date(ms)/`` -> ISO 8601 UTC; key/value arrays -> objects.
    """
    if isinstance(value, str):
        date = parse_date(value)
        return date if date is not None else value
    if isinstance(value, list):
        if value and all(isinstance(v, Mapping) and set(v) >= {"key", "value"} for v in value):
            return {str(v["key"]): plain(v["value"]) for v in value}
        return [plain(v) for v in value]
    if not isinstance(value, Mapping):
        return value
    kind = _type_name(value)
    if kind == "AliasedValue" or ("AttributeLogicalName" in value and "Value" in value):
        return plain(value.get("Value"))
    if kind in ("OptionSetValue", "Money", "BooleanManagedProperty") or (set(value) - {"__type"} == {"Value"}):
        return plain(value.get("Value"))
    if kind == "EntityCollection" or "Entities" in value:
        return [plain(e) for e in value.get("Entities") or []]
    if _is_entity(value):
        return attributes_of(value)
    if _is_reference(value):
        return {"table": value.get("LogicalName"), "id": _guid(value.get("Id")), "name": value.get("Name")}
    return {k: plain(v) for k, v in value.items() if k != "__type"}


def _guid(value: Any) -> str | None:
    return str(value).lower() if value else None


def kv(items: Any) -> dict[str, Any]:
    """A WCF key/value array as a dict of the raw values (``None`` or missing -> empty)."""
    if not isinstance(items, list):
        return {}
    return {str(i["key"]): i.get("value") for i in items if isinstance(i, Mapping) and "key" in i}


def attributes_of(entity: Mapping[str, Any]) -> dict[str, Any]:
    return {k: plain(v) for k, v in kv(entity.get("Attributes")).items()}


def _images(items: Any) -> dict[str, dict[str, Any]]:
    return {alias: attributes_of(e) for alias, e in kv(items).items() if isinstance(e, Mapping)}


def _changed(message: str, inputs: Mapping[str, Any], table: str) -> dict[str, Any]:
    """What the operation changed, by message: the Target's columns, the new state, the new owner, else the inputs."""
    target = inputs.get("Target")
    if message in ("Create", "Update", "Upsert") and isinstance(target, Mapping) and _is_entity(target):
        return attributes_of(target)
    if message == "Delete":
        return {}
    if message in ("SetState", "SetStateDynamicEntity"):
        return {"statecode": plain(inputs.get("State")), "statuscode": plain(inputs.get("Status"))}
    if message == "Assign":
        return {"ownerid": plain(inputs.get("Assignee"))}
    return {k: plain(v) for k, v in inputs.items() if k != "Target"}


def parse_context(context: Mapping[str, Any], *, size_exceeded: bool = False) -> dict[str, Any]:
    """The flat event of one RemoteExecutionContext (see ``schemas/triggers/webhook.payload.json``).

    When the delivery was oversized, Dataverse removed the inputs and the images: ``changed_attributes`` and both
    images are then ``null`` (unknown, not empty) and ``reread`` names the record to read again.
    """
    message = str(context.get("MessageName") or "")
    table = str(context.get("PrimaryEntityName") or "")
    inputs = kv(context.get("InputParameters"))
    outputs = kv(context.get("OutputParameters"))
    record_id = _guid(context.get("PrimaryEntityId"))
    if message == "Create" and outputs.get("id"):
        record_id = _guid(outputs["id"])
    target = inputs.get("Target") or inputs.get("EntityMoniker")
    if not record_id and isinstance(target, Mapping):
        record_id = _guid(target.get("Id"))
    owning = context.get("OwningExtension")
    step_id = _guid(owning.get("Id")) if isinstance(owning, Mapping) else None
    unknown = size_exceeded or ("InputParameters" not in context)
    created = context.get("OperationCreatedOn")
    event: dict[str, Any] = {
        "message": message,
        "table": table,
        "record_id": record_id,
        "changed_attributes": None if unknown else _changed(message, inputs, table),
        "pre_images": None if unknown else _images(context.get("PreEntityImages")),
        "post_images": None if unknown else _images(context.get("PostEntityImages")),
        "size_exceeded": size_exceeded,
        "reread": {"table": table, "id": record_id} if unknown and record_id and message != "Delete" else None,
        "user_id": _guid(context.get("UserId")),
        "initiating_user_id": _guid(context.get("InitiatingUserId")),
        "business_unit_id": _guid(context.get("BusinessUnitId")),
        "organization_id": _guid(context.get("OrganizationId")),
        "organization_name": context.get("OrganizationName"),
        "correlation_id": _guid(context.get("CorrelationId")),
        "operation_id": _guid(context.get("OperationId")),
        "request_id": _guid(context.get("RequestId")),
        "step_id": step_id,
        "depth": context.get("Depth"),
        "stage": context.get("Stage"),
        "mode": _MODES.get(context.get("Mode")),
        "time": parse_date(created) if isinstance(created, str) else None,
    }
    event["dedupe_key"] = dedupe_key(event)
    event["raw"] = dict(context)
    return event


def dedupe_key(event: Mapping[str, Any]) -> str:
    """OperationId + step + message + record: what stays the same when Dataverse sends one delivery again."""
    parts = [event.get("operation_id"), event.get("step_id"), event.get("message"), event.get("record_id")]
    return "|".join(str(p or "") for p in parts)


def _is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower().startswith("application/json")


def handle(request: WebhookRequest, config: WebhookConfig) -> dict[str, Any]:
    """Verify, then parse one delivery into its flat event; raise a :class:`WebhookError` carrying the status.

    Order matters: the secret is checked first, so nothing about the body (size, shape) is revealed to a sender
    without it, except the method (405), which carries no information.
    """
    if request.method != "POST":
        raise WebhookPayloadError(f"webhook deliveries are POST requests, not {request.method}", status_code=405)
    verify(request, config)
    declared = request.headers.get("content-length", "")
    if len(request.body) > config.max_body_bytes or (declared.isdigit() and int(declared) > config.max_body_bytes):
        raise WebhookPayloadError(
            f"webhook body is larger than max_body_bytes ({config.max_body_bytes}); raise the limit in the trigger "
            "configuration if deliveries this large are expected",
            status_code=413,
        )
    content_type = request.headers.get("content-type", "application/json")
    if not _is_json(content_type):
        raise WebhookPayloadError(f"webhook body must be application/json, not {content_type}", status_code=415)
    try:
        context = json.loads(request.body)
    except json.JSONDecodeError as exc:
        raise WebhookPayloadError(f"webhook body is not JSON ({exc.msg} at {exc.pos})", status_code=400) from None
    except UnicodeDecodeError:
        raise WebhookPayloadError("webhook body is not UTF-8 JSON", status_code=400) from None
    if not isinstance(context, Mapping) or "MessageName" not in context or "PrimaryEntityName" not in context:
        raise WebhookPayloadError(
            "webhook body is not a RemoteExecutionContext (MessageName and PrimaryEntityName are missing)",
            status_code=400,
        )
    event = parse_context(context, size_exceeded=SIZE_EXCEEDED_HEADER in request.headers)
    if event["table"] != config.table:
        raise WebhookPayloadError(
            f"delivery is for table {event['table']!r} but this trigger is configured for {config.table!r}: a step "
            "of another registration points at this URL",
            status_code=422,
        )
    if event["message"] not in config.messages:
        raise WebhookPayloadError(
            f"delivery is for message {event['message']!r}, which this trigger is not configured for", status_code=422
        )
    return event


# =====================================================================================================================
# Deduplication


class DedupeStore(Protocol):
    """Remembers delivery keys; ``add`` is atomic and says whether the key is new."""

    def add(self, key: str) -> bool: ...

    def discard(self, key: str) -> None: ...


class MemoryDedupeStore:
    """The last ``capacity`` keys in one process (oldest forgotten first); enough for one worker."""

    def __init__(self, capacity: int = DEFAULT_DEDUPE_CAPACITY) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: str) -> bool:
        with self._lock:
            if key in self._keys:
                self._keys.move_to_end(key)
                return False
            self._keys[key] = None
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
            return True

    def discard(self, key: str) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)


class SqliteDedupeStore:
    """Keys in a SQLite file shared by several worker processes; the primary key makes ``add`` atomic across them."""

    def __init__(self, path: str | Path, capacity: int = DEFAULT_DEDUPE_CAPACITY) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, n INTEGER NOT NULL)")

    def add(self, key: str) -> bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM seen").fetchone()[0]
                cur = self._db.execute("INSERT OR IGNORE INTO seen (key, n) VALUES (?, ?)", (key, n))
                added = cur.rowcount == 1
                if added:
                    self._db.execute("DELETE FROM seen WHERE n <= ?", (n - self.capacity,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return added

    def discard(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM seen WHERE key = ?", (key,))

    def close(self) -> None:
        self._db.close()


def dedupe_store_for(capacity: int | None = None, sqlite_path: str | None = None) -> DedupeStore:
    """In memory by default; a SQLite file when several worker processes receive for one configuration."""
    size = capacity or DEFAULT_DEDUPE_CAPACITY
    if sqlite_path:
        return SqliteDedupeStore(sqlite_path, size)
    return MemoryDedupeStore(size)


# =====================================================================================================================
# Registration: serviceendpoint + one sdkmessageprocessingstep per message (+ images)


def subscription_tag(config: WebhookConfig, target_url: str) -> str:
    """The endpoint name: the same configuration and URL give the same name, so a crashed subscribe is found again."""
    basis = json.dumps(
        [config.table, sorted(config.messages), target_url.split("?", 1)[0], config.authentication, config.mode],
        separators=(",", ":"),
    )
    return f"{TAG_PREFIX} {hashlib.sha256(basis.encode()).hexdigest()[:16]}"


def _auth_value(config: WebhookConfig) -> str:
    """``authvalue``: the key alone for WebhookKey, a ``<settings>`` document for the header and query modes."""
    assert config.secret is not None
    if config.authentication == "webhook_key":
        return config.secret.reveal()
    return (
        f"<settings><setting name={quoteattr(str(config.auth_name))} value={quoteattr(config.secret.reveal())} />"
        "</settings>"
    )


def _one(connection: Connection, path: str) -> dict[str, Any] | None:
    rows = connection.client.get_json(path).get("value", [])
    return dict(rows[0]) if rows else None


def _created_id(response: Any, entity_set: str) -> str:
    created = entity_id(response)
    if created is None:
        raise WebhookError(f"Dataverse did not return the id of the new {entity_set} row (no OData-EntityId header)")
    return created


def _delete(connection: Connection, entity_set: str, rid: str) -> None:
    with contextlib.suppress(NotFoundError):  # already gone: removal is idempotent
        connection.client.request("DELETE", f"{entity_set}({rid})")


def subscribe(config: WebhookConfig, connection: Connection, target_url: str) -> dict[str, Any]:
    """Register the endpoint and its steps (idempotent), undoing this call's creations if any step fails.

    An endpoint with this configuration's tag that already exists (a previous subscribe crashed, or a platform
    subscribes twice) is reused and completed, so a retried subscribe never leaves two endpoints.
    """
    if config.authentication == "none":
        raise WebhookError(
            "a subscription needs an authentication mode: Dataverse would deliver to an unauthenticated URL"
        )
    tag = subscription_tag(config, target_url)
    client = connection.client
    created: list[tuple[str, str]] = []
    endpoint_body = {
        "name": tag,
        "description": f"Created by d365-connector for {config.table}: {', '.join(config.messages)}",
        "url": target_url,
        "contract": CONTRACT_WEBHOOK,
        "authtype": AUTH_TYPES[config.authentication],
        "authvalue": _auth_value(config),
        "messageformat": MESSAGE_FORMAT_JSON,
    }
    try:
        existing = _one(connection, f"serviceendpoints?$select=serviceendpointid&$filter=name eq {quote_string(tag)}")
        if existing is not None:
            endpoint_id = str(existing["serviceendpointid"])
            client.request("PATCH", f"serviceendpoints({endpoint_id})", json=endpoint_body)
        else:
            endpoint_id = _created_id(
                client.request("POST", "serviceendpoints", json=endpoint_body), "serviceendpoints"
            )
            created.append(("serviceendpoints", endpoint_id))
        steps = []
        for message in config.messages:
            steps.append(_ensure_step(config, connection, endpoint_id, tag, message, created))
    except (DataverseApiError, WebhookError):
        for entity_set, rid in reversed(created):
            try:
                _delete(connection, entity_set, rid)
            except DataverseApiError as exc:  # keep undoing the rest; the tag finds leftovers next time
                log.warning("could not remove %s(%s) after a failed subscribe: %s", entity_set, rid, exc.message)
        raise
    return {"tag": tag, "table": config.table, "serviceendpoint_id": endpoint_id, "steps": steps}


def _ensure_step(
    config: WebhookConfig,
    connection: Connection,
    endpoint_id: str,
    tag: str,
    message: str,
    created: list[tuple[str, str]],
) -> dict[str, Any]:
    client = connection.client
    msg = _one(connection, f"sdkmessages?$select=sdkmessageid&$filter=name eq {quote_string(message)}")
    if msg is None:
        raise WebhookError(f"Dataverse has no message named {message!r}")
    message_id = str(msg["sdkmessageid"])
    flt = _one(
        connection,
        "sdkmessagefilters?$select=sdkmessagefilterid&$filter="
        f"_sdkmessageid_value eq {message_id} and primaryobjecttypecode eq {quote_string(config.table)}",
    )
    if flt is None:
        raise WebhookError(f"table {config.table!r} does not support the message {message!r} (no sdkmessagefilter)")
    name = f"{tag}: {message} of {config.table}"
    step = _one(
        connection,
        "sdkmessageprocessingsteps?$select=sdkmessageprocessingstepid&$filter="
        f"_eventhandler_value eq {endpoint_id} and name eq {quote_string(name)}",
    )
    if step is not None:
        step_id = str(step["sdkmessageprocessingstepid"])
    else:
        body: dict[str, Any] = {
            "name": name,
            "mode": 0 if config.mode == "synchronous" else 1,
            "stage": STAGE_POST_OPERATION,
            "rank": 1,
            "supporteddeployment": 0,
            "asyncautodelete": config.mode != "synchronous",
            "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
            "sdkmessageid@odata.bind": f"/sdkmessages({message_id})",
            "sdkmessagefilterid@odata.bind": f"/sdkmessagefilters({flt['sdkmessagefilterid']})",
        }
        if message == "Update" and config.filtering_attributes:
            body["filteringattributes"] = ",".join(config.filtering_attributes)
        step_id = _created_id(
            client.request("POST", "sdkmessageprocessingsteps", json=body), "sdkmessageprocessingsteps"
        )
        created.append(("sdkmessageprocessingsteps", step_id))
    images = []
    for alias, columns, imagetype, allowed in (
        ("PreImage", config.pre_image, 0, message not in ("Create",)),
        ("PostImage", config.post_image, 1, message not in ("Delete",)),
    ):
        if columns is None or not allowed:
            continue  # Dataverse has no pre-image on Create and no post-image on Delete
        found = _one(
            connection,
            "sdkmessageprocessingstepimages?$select=sdkmessageprocessingstepimageid&$filter="
            f"_sdkmessageprocessingstepid_value eq {step_id} and entityalias eq {quote_string(alias)}",
        )
        if found is not None:
            images.append(str(found["sdkmessageprocessingstepimageid"]))
            continue
        image_body: dict[str, Any] = {
            "name": alias,
            "entityalias": alias,
            "imagetype": imagetype,
            "messagepropertyname": IMAGE_PROPERTY.get(message, "Target"),
            "sdkmessageprocessingstepid@odata.bind": f"/sdkmessageprocessingsteps({step_id})",
        }
        if columns:
            image_body["attributes"] = ",".join(columns)
        image_id = _created_id(
            client.request("POST", "sdkmessageprocessingstepimages", json=image_body),
            "sdkmessageprocessingstepimages",
        )
        created.append(("sdkmessageprocessingstepimages", image_id))
        images.append(image_id)
    return {"message": message, "step_id": step_id, "image_ids": images}


def unsubscribe(subscription: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Remove the images, steps and endpoint of a subscription; rows already gone are fine (idempotent).

    Steps are found again through the endpoint too, so a step created by a subscribe that crashed before returning
    its ids is removed as well.
    """
    endpoint_id = subscription.get("serviceendpoint_id")
    tag = subscription.get("tag")
    if not endpoint_id and tag:
        found = _one(connection, f"serviceendpoints?$select=serviceendpointid&$filter=name eq {quote_string(tag)}")
        endpoint_id = found["serviceendpointid"] if found else None
    step_ids = {str(s["step_id"]) for s in subscription.get("steps", []) if s.get("step_id")}
    image_ids = {str(i) for s in subscription.get("steps", []) for i in s.get("image_ids", [])}
    if endpoint_id:
        rows = connection.client.get_json(
            f"sdkmessageprocessingsteps?$select=sdkmessageprocessingstepid&$filter=_eventhandler_value eq {endpoint_id}"
        ).get("value", [])
        step_ids |= {str(r["sdkmessageprocessingstepid"]) for r in rows}
    for step_id in sorted(step_ids):
        rows = connection.client.get_json(
            "sdkmessageprocessingstepimages?$select=sdkmessageprocessingstepimageid&$filter="
            f"_sdkmessageprocessingstepid_value eq {step_id}"
        ).get("value", [])
        image_ids |= {str(r["sdkmessageprocessingstepimageid"]) for r in rows}
    for image_id in sorted(image_ids):
        _delete(connection, "sdkmessageprocessingstepimages", image_id)
    for step_id in sorted(step_ids):
        _delete(connection, "sdkmessageprocessingsteps", step_id)
    if endpoint_id:
        _delete(connection, "serviceendpoints", str(endpoint_id))
    return {"removed": True, "serviceendpoint_id": endpoint_id, "steps": sorted(step_ids), "images": sorted(image_ids)}


# =====================================================================================================================
# ASGI app for platforms and for ``d365 webhook serve``

EventCallback = Callable[[dict[str, Any]], None]


def create_asgi_app(
    config: Mapping[str, Any],
    on_event: EventCallback,
    *,
    runtime: Any = None,
    trigger_id: str = "webhook",
    path: str = "/",
) -> Any:
    """An ASGI app that answers Dataverse deliveries on ``path`` and hands each verified, new event to ``on_event``.

    Validation (config and event) goes through the runtime's trigger entry point, so a platform mounting this app
    gets exactly what the hook and the schema promise. Errors answer with their status and a short JSON reason that
    never includes the secret; duplicates answer 200 (so Dataverse stops sending) and emit nothing.
    """
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from connector.runtime import default_runtime

    rt = runtime or default_runtime()

    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        hook_request = WebhookRequest.build(request.method, str(request.url), request.headers.items(), body)
        try:
            event = rt.handle_trigger(trigger_id, hook_request, config)
        except WebhookError as exc:
            return JSONResponse({"error": exc.kind, "message": exc.message}, status_code=exc.status_code)
        if event is None:
            return JSONResponse({"accepted": True, "duplicate": True})
        try:
            on_event(event)
        except Exception:
            # not handed on: forget it, so Dataverse's next attempt is not dropped as a redelivery
            rt.forget_trigger_event(trigger_id, config, event)
            log.exception("webhook event handler failed; answering 500 so the delivery is retried")
            return JSONResponse({"error": "handler", "message": "the event could not be handed on"}, status_code=500)
        return JSONResponse({"accepted": True, "duplicate": False})

    from starlette.applications import Starlette

    return Starlette(routes=[Route(path, receive, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])


def load_trigger_config(path: str | Path) -> dict[str, Any]:
    """Read a trigger configuration file; a ``{"file": ...}`` secret is taken relative to the file's folder."""
    from connector.errors import InputError

    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"trigger configuration {str(file)!r} is not a readable JSON file ({type(exc).__name__})"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"trigger configuration {str(file)!r} must hold a JSON object")
    secret = data.get("secret")
    if isinstance(secret, Mapping) and isinstance(secret.get("file"), str) and not Path(secret["file"]).is_absolute():
        data["secret"] = {"file": str(file.resolve().parent / secret["file"])}
    return data


def _is_loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def serve(
    runtime: Any,
    config: Mapping[str, Any],
    *,
    connection: Connection | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    path: str = "/",
    public_url: str | None = None,
    on_event: EventCallback,
    on_status: Callable[[dict[str, Any]], None],
) -> None:
    """Receive deliveries with uvicorn until interrupted; with a ``connection``, subscribe first and remove on exit.

    The socket listens before subscribing, so a delivery Dataverse makes while the steps are being registered waits
    in the backlog instead of being refused. ``public_url`` (where Dataverse can reach this receiver) is required
    unless the organization is on loopback (the local emulator), where the local URL is reachable as it is. The
    access log stays off: the WebhookKey travels in the URL's query string.
    """
    import socket

    import uvicorn

    class _StoppingServer(uvicorn.Server):
        """uvicorn re-raises SIGINT/SIGTERM once shut down, which would kill the process before it unsubscribes."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()  # the signal did its job (stop serving); the caller cleans up

    validated = runtime.trigger_config("webhook", config)  # refuse a bad configuration before binding anything
    try:  # an unset variable or unreadable file would otherwise answer every delivery 500
        WebhookConfig.from_mapping(validated)
    except WebhookError as exc:
        from connector.errors import InputError, InputProblem

        raise InputError([InputProblem("$.secret", exc.message.removeprefix("trigger configuration: "))]) from None
    if connection is not None and public_url is None and not _is_loopback_url(connection.organization_url):
        raise WebhookError(
            "--public-url is required with --subscribe: Dataverse must reach this receiver at a public HTTPS URL "
            "(a tunnel or reverse proxy in front of it)"
        )
    if config.get("authentication") == "none":
        log.warning("webhook receiver without authentication: anyone who knows the URL can post events")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    shown_host = f"[{host}]" if ":" in host else host
    local_url = f"http://{shown_host}:{sock.getsockname()[1]}{path}"
    on_status({"listening": local_url})
    app = create_asgi_app(config, on_event, runtime=runtime, path=path)
    subscription = None
    try:
        if connection is not None:
            subscription = runtime.subscribe_trigger("webhook", config, connection, public_url or local_url)
            on_status({"subscribed": subscription})
        server = _StoppingServer(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", http="h11"))
        server.run(sockets=[sock])
    finally:
        sock.close()
        if subscription is not None and connection is not None:
            on_status({"unsubscribed": runtime.unsubscribe_trigger("webhook", subscription, connection)})


__all__ = [
    "DedupeStore",
    "MemoryDedupeStore",
    "SqliteDedupeStore",
    "WebhookConfig",
    "WebhookRequest",
    "create_asgi_app",
    "handle",
    "load_trigger_config",
    "parse_context",
    "parse_date",
    "plain",
    "serve",
    "subscribe",
    "subscription_tag",
    "unsubscribe",
    "verify",
]
