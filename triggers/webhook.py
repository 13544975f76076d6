"""The ``webhook`` trigger: thin hooks over :mod:`connector.webhook_delivery` and
:mod:`connector.webhook_registration`.

The runtime's trigger entry points validate the configuration before these hooks run and the event after, and do the
deduplication; the hooks only translate between the platform's call and the library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import webhook_delivery, webhook_registration
from connector.connection import Connection
from connector.hookspecs import hookimpl


@hookimpl
def handle_webhook(request: webhook_delivery.WebhookRequest, config: Mapping[str, Any]) -> dict[str, Any]:
    """Verify the secret, parse the RemoteExecutionContext and flatten it into the event."""
    return webhook_delivery.handle(request, webhook_delivery.WebhookConfig.from_mapping(config))


@hookimpl
def subscribe_webhook(config: Mapping[str, Any], connection: Connection, target_url: str) -> dict[str, Any]:
    """Register the serviceendpoint and one step per message (with images); the ids come back to keep."""
    return webhook_registration.subscribe(webhook_delivery.WebhookConfig.from_mapping(config), connection, target_url)


@hookimpl
def unsubscribe_webhook(subscription: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Remove everything ``subscribe_webhook`` registered; already removed rows are fine."""
    return webhook_registration.unsubscribe(subscription, connection)
