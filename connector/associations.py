"""Linking and unlinking rows through navigation properties (``$ref``): the associate and disassociate operations and
their phase-two checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connector.addressing import address, find_by_key, not_found, predicate, with_query
from connector.errors import InputProblem, NotFoundError
from connector.inputs import AssociateEntities, DisassociateEntities, RelatedRow
from connector.metadata import TableMetadata
from connector.odata import entity_id, key_is_url_safe
from connector.problems import Problems, check_key, check_navigation, check_table

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "associate_entities",
    "associate_entities_problems",
    "disassociate_entities",
    "disassociate_entities_problems",
    "find_related",
]


def associate_entities_problems(inputs: AssociateEntities, connection: Connection) -> list[InputProblem]:
    """Phase two of ``associate_entities``: the row, the navigation property, and a related row it can point to."""
    return _link_problems(inputs, connection, disassociate=False)


def disassociate_entities_problems(inputs: DisassociateEntities, connection: Connection) -> list[InputProblem]:
    """Phase two of ``disassociate_entities``: as associate, but a single-valued link may be cleared without a row."""
    return _link_problems(inputs, connection, disassociate=True)


def _link_problems(
    inputs: AssociateEntities | DisassociateEntities, connection: Connection, *, disassociate: bool
) -> list[InputProblem]:
    p = Problems(connection)
    meta = check_table(p, inputs.table, inputs.key)
    if meta is None:
        return p.items
    nav = inputs.navigation
    meta, found = check_navigation(p, meta, nav, "$.navigation")
    if found is None:
        return p.items
    target_name, is_collection = found
    related = inputs.related
    if related is None:
        if not (disassociate and not is_collection):
            p.add("$.related", f"{nav!r} needs the related row: related {{table, id}} or {{table, key}}")
        return p.items
    target = p.table(related.table, "$.related.table")
    if target is None:
        return p.items
    allowed = ("systemuser", "team") if target_name == "owner" else (target_name,)
    if target.logical_name not in allowed:
        p.add(
            "$.related.table",
            f"{nav!r} relates {meta.logical_name!r} to {' or '.join(allowed)}, not {target.logical_name!r}",
        )
    elif related.key:
        check_key(p, target, related.key, "$.related.key")
    return p.items


def find_related(connection: Connection, related: RelatedRow, impersonate: str | None) -> tuple[TableMetadata, str]:
    target = connection.metadata.table(related.table)
    if related.id:
        return target, str(related.id)
    key = related.key
    assert key  # the schema requires id or key
    if key_is_url_safe(key):
        try:
            body = connection.client.get_json(
                with_query(
                    f"{target.entity_set}({predicate(connection, target, key)})", {"$select": target.primary_id}
                ),
                impersonate=impersonate,
            )
        except NotFoundError as exc:
            raise not_found(target, key=key, cause=exc, what="the related row") from None
        return target, str(body[target.primary_id])
    found = find_by_key(connection, target, key, impersonate)
    if found is None:
        raise not_found(target, key=key, what="the related row")
    return target, found


def associate_entities(connection: Connection, inputs: AssociateEntities) -> dict[str, Any]:
    """Link two rows through a navigation property: PUT ``nav/$ref`` (single-valued) or POST (collection)."""
    meta = connection.metadata.table(inputs.table)
    impersonate = inputs.impersonate
    nav = inputs.navigation
    found = meta.navigation_target(nav)
    assert found is not None
    path = address(connection, meta, inputs.id, inputs.key, impersonate)
    target, related_id = find_related(connection, inputs.related, impersonate)
    ref = {"@odata.id": f"{connection.client.api_url}/{target.entity_set}({related_id})"}
    method = "POST" if found[1] else "PUT"
    try:
        connection.client.request(method, f"{path}/{nav}/$ref", json=ref, impersonate=impersonate)
    except NotFoundError as exc:
        raise not_found(meta, id=inputs.id, key=inputs.key, cause=exc) from None
    return _association_output(meta, path, nav, target, related_id)


def disassociate_entities(connection: Connection, inputs: DisassociateEntities) -> dict[str, Any]:
    """Unlink: DELETE ``nav/$ref`` (single-valued) or ``nav(<id>)/$ref`` (collection)."""
    meta = connection.metadata.table(inputs.table)
    impersonate = inputs.impersonate
    nav = inputs.navigation
    found = meta.navigation_target(nav)
    assert found is not None
    path = address(connection, meta, inputs.id, inputs.key, impersonate)
    target: TableMetadata | None = None
    related_id: str | None = None
    if inputs.related:
        target, related_id = find_related(connection, inputs.related, impersonate)
    ref_path = f"{path}/{nav}({related_id})/$ref" if found[1] else f"{path}/{nav}/$ref"
    try:
        connection.client.request("DELETE", ref_path, impersonate=impersonate)
    except NotFoundError as exc:
        raise not_found(meta, id=inputs.id, key=inputs.key, cause=exc) from None
    return _association_output(meta, path, nav, target, related_id)


def _association_output(
    meta: TableMetadata, path: str, nav: str, target: TableMetadata | None, related_id: str | None
) -> dict[str, Any]:
    return {
        "table": meta.logical_name,
        "id": entity_id(path),
        "navigation": nav,
        "related_table": target.logical_name if target else None,
        "related_id": related_id,
    }
