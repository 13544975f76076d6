"""Registration of the webhook trigger in Dataverse: the ``serviceendpoint`` and one ``sdkmessageprocessingstep`` per
message (with its images), and their removal.

The endpoint is named with a tag derived from the configuration and the URL (:func:`subscription_tag`), so a subscribe
that crashed halfway is found and finished by the next one instead of leaving a second endpoint, and an unsubscribe
finds steps whose ids never came back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from connector.errors import DataverseApiError, NotFoundError, WebhookError
from connector.odata import entity_id, quote_string

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.webhook_delivery import WebhookConfig

__all__ = ["AUTH_TYPES", "TAG_PREFIX", "subscribe", "subscription_tag", "unsubscribe"]

log = logging.getLogger("connector.webhooks")  # one logger for the webhook modules: platforms configure it by name

#: ``serviceendpoint.contract`` 8 is Webhook; ``authtype`` 4 WebhookKey, 5 HttpHeader, 6 HttpQueryString.
CONTRACT_WEBHOOK = 8
AUTH_TYPES = {"webhook_key": 4, "http_header": 5, "http_query_string": 6}
MESSAGE_FORMAT_JSON = 2
STAGE_POST_OPERATION = 40
#: Messages whose image comes from a request property other than ``Target`` (register-plug-in.md).
IMAGE_PROPERTY = {"SetState": "EntityMoniker", "SetStateDynamicEntity": "EntityMoniker"}
TAG_PREFIX = "d365-connector webhook"


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
    """One message's step on the endpoint (found by its name, else created) with its images."""
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
    images = _ensure_images(config, connection, step_id, message, created)
    return {"message": message, "step_id": step_id, "image_ids": images}


def _ensure_images(
    config: WebhookConfig, connection: Connection, step_id: str, message: str, created: list[tuple[str, str]]
) -> list[str]:
    """The step's pre- and post-images (found by alias, else created), where the message can have them."""
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
            connection.client.request("POST", "sdkmessageprocessingstepimages", json=image_body),
            "sdkmessageprocessingstepimages",
        )
        created.append(("sdkmessageprocessingstepimages", image_id))
        images.append(image_id)
    return images


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
