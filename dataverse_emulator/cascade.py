"""Cascade configuration of 1:N relationships and what a row delete does to the rows that point at it.

Why per relationship: Dataverse follows each relationship's ``CascadeConfiguration`` (CascadeType: NoCascade,
Cascade, Active, UserOwned, RemoveLink, Restrict; the Microsoft.Xrm.Sdk.Metadata reference). A parental relationship
deletes the children with the parent, a referential one clears their lookup (RemoveLink), and Restrict refuses the
delete while a child exists, with ``CannotDeleteDueToAssociation`` (0x80040227, includes/data-service-error-codes.md).
A relationship created without a configuration gets the referential default (Delete RemoveLink, the rest NoCascade).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors
from .model import Relationship, Table
from .storage import q, type_col

if TYPE_CHECKING:
    from .record_writes import RecordApi

ACTIONS = ("Assign", "Delete", "Merge", "Reparent", "Share", "Unshare", "RollupView")
TYPES = ("NoCascade", "Cascade", "Active", "UserOwned", "RemoveLink", "Restrict")
#: The values each action accepts (create-update-entity-relationships-using-web-api.md, "cascade configuration").
ALLOWED = {
    "Delete": ("Cascade", "RemoveLink", "Restrict"),
    "Merge": ("NoCascade", "Cascade"),
    "RollupView": ("NoCascade", "Cascade", "Active", "UserOwned"),
}
REFERENTIAL = {action: "NoCascade" for action in ACTIONS} | {"Delete": "RemoveLink"}
PARENTAL = {action: "Cascade" for action in ACTIONS} | {"RollupView": "NoCascade"}
RESTRICT_DELETE = REFERENTIAL | {"Delete": "Restrict"}
#: Seeded relationships whose real configuration is not referential (from each table's entity reference; which of
#: them are parental and which restrict is a GUESS except contact_customer_accounts, named in the issue as parental).
SEEDED = {
    "contact_customer_accounts": PARENTAL,
    "contact_customer_contacts": PARENTAL,
    "opportunity_customer_accounts": PARENTAL,
    "opportunity_customer_contacts": PARENTAL,
    "incident_customer_accounts": RESTRICT_DELETE,
    "incident_customer_contacts": RESTRICT_DELETE,
    "listmember_list": PARENTAL,
}


def configuration(rel: Relationship) -> dict[str, str]:
    """The relationship's CascadeConfiguration as the metadata shows it."""
    return dict(rel.cascade or SEEDED.get(rel.schema_name, REFERENTIAL))


def read_configuration(sent: Any) -> dict[str, str]:
    """A create body's ``CascadeConfiguration`` over the referential default; unknown actions or values refused
    (the code and wording of that refusal are a GUESS)."""
    if sent is None:
        return dict(REFERENTIAL)
    if not isinstance(sent, dict):
        raise errors.bad_request("CascadeConfiguration must be an object.", "0x80040203")
    out = dict(REFERENTIAL)
    for action, value in sent.items():
        if action.startswith("@"):
            continue
        if action not in ACTIONS and action != "Archive":
            raise errors.bad_request(f"'{action}' is not a CascadeConfiguration property.", "0x80040203")
        if value not in ALLOWED.get(action, TYPES):
            raise errors.bad_request(f"'{value}' is not a valid cascade type for {action}.", "0x80040203")
        out[action] = str(value)
    return out


def restricted() -> errors.DataverseError:
    """``CannotDeleteDueToAssociation`` (its HTTP status 400 is a GUESS)."""
    return errors.DataverseError(
        400, "0x80040227", "The object you tried to delete is associated with another object and cannot be deleted."
    )


def _children(api: RecordApi, rel: Relationship, table: Table, rid: str) -> list[str]:
    child = api.tables[rel.referencing_entity]
    col = rel.referencing_attribute
    where = f"{q(col)} = ? AND {q(type_col(col))} = ?"
    rows = api.store.query(
        f"SELECT {q(child.primary_id)} AS id FROM {q(child.logical_name)} WHERE {where}", [rid, table.logical_name]
    )
    return [str(r["id"]) for r in rows]


def delete_row(
    api: RecordApi, table: Table, rid: str, seen: set[tuple[str, str]] | None = None
) -> list[tuple[Table, str, dict[str, Any]]]:
    """Delete one row after following every relationship that points at it (children first, cycles once); returns
    the rows Cascade deleted with it, for their Delete events. Runs inside the request's transaction, so a Restrict
    found deep in the tree undoes the whole delete."""
    seen = seen if seen is not None else set()
    seen.add((table.logical_name, rid))
    cascaded: list[tuple[Table, str, dict[str, Any]]] = []
    for rel in list(api.rels):
        if rel.referenced_entity not in (table.logical_name, "owner") or rel.referencing_entity not in api.tables:
            continue
        ids = _children(api, rel, table, rid)
        if not ids:
            continue
        behaviour = configuration(rel)["Delete"]
        if behaviour == "Restrict":
            raise restricted()
        child = api.tables[rel.referencing_entity]
        if behaviour == "Cascade":
            for cid in ids:
                row = api.store.get(child.logical_name, cid)
                if row is not None and (child.logical_name, cid) not in seen:
                    cascaded += delete_row(api, child, cid, seen)
                    cascaded.append((child, cid, row))
            continue
        col = rel.referencing_attribute
        api.store.conn.execute(
            f"UPDATE {q(child.logical_name)} SET {q(col)} = NULL, {q(type_col(col))} = NULL "
            f"WHERE {q(col)} = ? AND {q(type_col(col))} = ?",
            (rid, table.logical_name),
        )
    api.store.delete(table.logical_name, rid)
    return cascaded
