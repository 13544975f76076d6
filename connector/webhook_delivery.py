"""A Dataverse webhook delivery: verify its secret, flatten its RemoteExecutionContext into one event, refuse the rest.

Why this lives in ``connector/`` and not in the trigger module: a platform that mounts the trigger in its own server,
the ``d365 webhook serve`` command (:mod:`connector.webhook_server`) and the hook implementations all need the same
verification and parsing, and the hook module stays a thin adapter (as the action modules are). Registration of the
endpoint is :mod:`connector.webhook_registration`; redeliveries are caught by :mod:`connector.webhook_dedupe`.

What Dataverse sends (``use-webhooks.md`` in MicrosoftDocs/powerapps-docs): a POST whose body is the WCF
DataContract JSON of ``RemoteExecutionContext`` (collections as ``[{"key": .., "value": ..}]``, typed values with a
``__type``, dates as ``/Date(ms)/``), the headers ``x-ms-dynamics-organization``, ``x-ms-dynamics-entity-name``,
``x-ms-dynamics-request-name``, ``x-ms-correlation-request-id`` and, above 256 KB, ``x-ms-dynamics-msg-size-exceeded``
with ``ParentContext``, ``InputParameters`` and both image collections removed. Only the status code of our answer
matters to Dataverse: 502/503/504 earn one more attempt, anything else non-2xx is a failure (and for a synchronous
step, fails the user's operation), so a delivery we cannot use gets a 4xx that names the reason.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from connector import strict_json
from connector.errors import WebhookError, WebhookPayloadError, WebhookVerificationError
from connector.webhook_dedupe import DEFAULT_DEDUPE_CAPACITY

if TYPE_CHECKING:
    from connector.policy import OperatorPolicy
    from connector.secret import Secret

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "SIZE_EXCEEDED_HEADER",
    "WebhookConfig",
    "WebhookRequest",
    "attributes_of",
    "check_before_body",
    "dedupe_key",
    "handle",
    "kv",
    "parse_context",
    "parse_date",
    "plain",
    "too_large",
    "verify",
]

SIZE_EXCEEDED_HEADER = "x-ms-dynamics-msg-size-exceeded"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


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
    def from_mapping(
        cls, data: Mapping[str, Any], base_dir: Path | None = None, policy: OperatorPolicy | None = None
    ) -> WebhookConfig:
        """Read a configuration the runtime already validated against its schema; resolves the secret, after
        checking an ``{"env"}`` or ``{"file"}`` source against ``policy`` when one is given (the receiver's)."""
        from connector.secret import resolve_secret

        auth = str(data.get("authentication", "webhook_key"))
        secret = None
        if auth != "none":
            try:
                if policy is not None:
                    _check_secret_source(data.get("secret"), base_dir, policy)
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


def _check_secret_source(source: Any, base_dir: Path | None, policy: OperatorPolicy) -> None:
    if isinstance(source, Mapping) and isinstance(source.get("env"), str):
        policy.check_env(source["env"], "secret")
    if isinstance(source, Mapping) and isinstance(source.get("file"), str):
        path = Path(source["file"]).expanduser()
        policy.check_path(path if path.is_absolute() or base_dir is None else base_dir / path, "secret")


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


def too_large(config: WebhookConfig) -> WebhookPayloadError:
    return WebhookPayloadError(
        f"webhook body is larger than max_body_bytes ({config.max_body_bytes}); raise the limit in the trigger "
        "configuration if deliveries this large are expected",
        status_code=413,
    )


def check_before_body(request: WebhookRequest, config: WebhookConfig) -> None:
    """The checks that need no body (method, secret, declared length), for a server to run before reading any of it:
    a sender without the key, or one announcing more than ``max_body_bytes``, never gets a byte buffered."""
    if request.method != "POST":
        raise WebhookPayloadError(f"webhook deliveries are POST requests, not {request.method}", status_code=405)
    verify(request, config)
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > config.max_body_bytes:
        raise too_large(config)


def handle(request: WebhookRequest, config: WebhookConfig) -> dict[str, Any]:
    """Verify, then parse one delivery into its flat event; raise a :class:`WebhookError` carrying the status.

    Order matters: the secret is checked first, so nothing about the body (size, shape) is revealed to a sender
    without it, except the method (405), which carries no information.
    """
    check_before_body(request, config)
    if len(request.body) > config.max_body_bytes:
        raise too_large(config)
    content_type = request.headers.get("content-type", "application/json")
    if not _is_json(content_type):
        raise WebhookPayloadError(f"webhook body must be application/json, not {content_type}", status_code=415)
    try:
        context = strict_json.loads(request.body)
    except strict_json.StrictJsonError as exc:
        raise WebhookPayloadError(f"webhook body refused: {exc}", status_code=400) from None
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
