"""Schema deletes: custom tables, columns and relationships removed from the model and from SQLite.

Why refusals before any change: Dataverse deletes a component only when nothing else depends on it, and answers the
dependency check with ``CannotDeleteInUseComponent`` (0x8004F01F, includes/data-service-error-codes.md) naming the
component and how many others reference it. Each delete is appended to ``_emulator_schema`` like the creates, so a
``--db`` restart replays it, and carries the MetadataIds it removed and when, which ``RetrieveMetadataChanges``
reports as ``DeletedMetadata`` to a client that sends its ``ClientVersionStamp``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import errors
from .bulk import drop_message_rows
from .model import Attribute, Relationship, Table
from .schema import persist
from .storage import q, type_col

if TYPE_CHECKING:
    from .emulator import Emulator

#: DeletedMetadataFilters (Microsoft.Xrm.Sdk.Metadata.Query): the kinds a deletion is reported under.
DELETED_FILTERS = {"Entity": 1, "Attribute": 2, "Relationship": 4, "Label": 8, "OptionSet": 16}


def in_use(kind: str, metadata_id: str, count: int) -> errors.DataverseError:
    """``CannotDeleteInUseComponent``: the documented wording ("1 other component" singular: COMMUNITY)."""
    noun = "component" if count == 1 else "components"
    return errors.DataverseError(
        400,
        "0x8004F01F",
        f"The {kind}({metadata_id}) component cannot be deleted because it is referenced by {count} other {noun}. "
        "For a list of referenced components, use the RetrieveDependenciesForDeleteRequest.",
    )


def read_only() -> errors.DataverseError:
    """A standard (non-custom) table, column or relationship: ``CannotDeleteAsItIsReadOnly`` (which code Dataverse
    gives for a system component is a GUESS)."""
    return errors.DataverseError(400, "0x80040228", "The object cannot be deleted because it is read-only.")


def _custom_relationships(emu: Emulator) -> set[str]:
    return getattr(emu, "custom_relationships", set())


def _many_to_many(emu: Emulator) -> list[dict[str, Any]]:
    return getattr(emu, "many_to_many", [])


def _drop_columns(emu: Emulator, table: Table, a: Attribute) -> None:
    """``ALTER TABLE ... DROP COLUMN`` for an attribute (its index first: SQLite refuses to drop an indexed column)."""
    conn = emu.store.conn
    conn.execute(f"DROP INDEX IF EXISTS {q('ix_' + table.logical_name + '_' + a.name)}")
    existing = {r[1] for r in conn.execute(f"PRAGMA table_info({q(table.logical_name)})")}
    for col in (a.name, type_col(a.name)) if a.is_lookup else (a.name,):
        if col in existing:
            conn.execute(f"ALTER TABLE {q(table.logical_name)} DROP COLUMN {q(col)}")


def _record(emu: Emulator, kind: str, payload: dict[str, Any], deleted: dict[str, list[str]], save: bool) -> None:
    if save:
        persist(emu, kind, {**payload, "deleted": deleted})


def delete_table(emu: Emulator, table: Table, save: bool = True) -> None:
    """Drop a custom table with its columns, its own lookups and keys; refused while another table depends on it."""
    if not table.custom:
        raise read_only()
    name = table.logical_name
    dependents = [r for r in emu.rels if r.referenced_entity == name and r.referencing_entity != name]
    dependents_nn = [m for m in _many_to_many(emu) if name in (m["Entity1LogicalName"], m["Entity2LogicalName"])]
    if dependents or dependents_nn:
        raise in_use("Entity", table.metadata_id, len(dependents) + len(dependents_nn))
    own = [r for r in emu.rels if name in (r.referencing_entity, r.referenced_entity)]
    for key in list(emu.store.keys.get(name, [])):
        emu.store.remove_key(key)
    emu.rels[:] = [r for r in emu.rels if r not in own]
    _custom_relationships(emu).difference_update(r.schema_name for r in own)
    del emu.tables[name]
    del emu.by_set[table.entity_set]
    emu.store.conn.execute(f"DROP TABLE IF EXISTS {q(name)}")
    drop_message_rows(emu.store, name)
    deleted = {
        "Entity": [table.metadata_id],
        "Attribute": [a.metadata_id for a in table.attributes.values()],
        "Relationship": [r.metadata_id for r in own],
    }
    _record(emu, "delete_table", {"table": name}, deleted, save)


def delete_column(emu: Emulator, table: Table, name: str, save: bool = True) -> None:
    """Drop a custom column (and its companion columns); refused for the primary columns, system columns, a
    companion on its own, the lookup of a relationship, and while an alternate key uses it."""
    a = table.attributes[name]
    if a.is_primary_name:
        raise errors.DataverseError(400, "0x80047002", "The Primary UI Attribute is not valid for deletion")
    if a.extra.get("AttributeOf"):
        raise errors.DataverseError(400, "0x80047016", "The Child Attribute is not valid for deletion")
    if a.is_primary_id or not a.custom:
        raise read_only()
    keys = [k for k in emu.store.keys.get(table.logical_name, []) if name in k.attributes]
    rels = [r for r in emu.rels if r.referencing_entity == table.logical_name and r.referencing_attribute == name]
    if keys or rels:
        raise in_use("Attribute", a.metadata_id, len(keys) + len(rels))
    companions = [c for c in table.attributes.values() if c.extra.get("AttributeOf") == name]
    for col in (a, *companions):
        _drop_columns(emu, table, col)
        del table.attributes[col.name]
    deleted = {"Attribute": [col.metadata_id for col in (a, *companions)]}
    _record(emu, "delete_column", {"table": table.logical_name, "name": name}, deleted, save)


def find_relationship(emu: Emulator, key: str) -> Relationship | dict[str, Any]:
    """A 1:N relationship or an N:N definition by ``SchemaName='x'`` or MetadataId, or the documented 404."""
    k = key.strip()
    by_name = k.lower().startswith("schemaname=")
    want = k.split("=", 1)[1].strip("'").lower() if by_name else k.lower()
    for r in emu.rels:
        if (r.schema_name.lower() if by_name else r.metadata_id) == want:
            return r
    for m in _many_to_many(emu):
        if (m["SchemaName"].lower() if by_name else m["MetadataId"]) == want:
            return m
    raise errors.DataverseError(404, "0x80040217", f"Could not find relationship {k}.")


def delete_relationship(emu: Emulator, key: str, save: bool = True) -> None:
    """1:N: the relationship and its lookup column; N:N: the definition and its intersect table."""
    rel = find_relationship(emu, key)
    schema = rel.schema_name if isinstance(rel, Relationship) else str(rel["SchemaName"])
    if schema not in _custom_relationships(emu):
        raise read_only()
    deleted: dict[str, list[str]]
    if isinstance(rel, Relationship):
        table = emu.tables[rel.referencing_entity]
        lookup = table.attributes[rel.referencing_attribute]
        emu.rels.remove(rel)
        _drop_columns(emu, table, lookup)
        del table.attributes[lookup.name]
        deleted = {"Relationship": [rel.metadata_id], "Attribute": [lookup.metadata_id]}
    else:
        _many_to_many(emu).remove(rel)
        emu.store.conn.execute(f"DROP TABLE IF EXISTS {q(str(rel['IntersectEntityName']))}")
        deleted = {"Relationship": [str(rel["MetadataId"])]}
    _custom_relationships(emu).discard(schema)
    _record(emu, "delete_relationship", {"schema": schema}, deleted, save)


def replay(emu: Emulator, kind: str, data: dict[str, Any]) -> bool:
    """Apply a persisted delete on a ``--db`` restart; False when ``kind`` is not a delete."""
    if kind == "delete_table":
        delete_table(emu, emu.tables[data["table"]], save=False)
    elif kind == "delete_column":
        delete_column(emu, emu.tables[data["table"]], data["name"], save=False)
    elif kind == "delete_relationship":
        delete_relationship(emu, f"SchemaName='{data['schema']}'", save=False)
    else:
        return False
    return True


def schema_sequence(emu: Emulator) -> int:
    """How many schema writes (creates and deletes) this organization has seen: the change-tracking position that
    ``ServerVersionStamp`` carries (its format is a GUESS; clients treat it as opaque)."""
    conn = emu.store.conn
    conn.execute("CREATE TABLE IF NOT EXISTS _emulator_schema (n INTEGER PRIMARY KEY, kind TEXT, body TEXT)")
    return int(conn.execute("SELECT COALESCE(MAX(n), 0) FROM _emulator_schema").fetchone()[0])


def deleted_since(emu: Emulator, after: int, filters: int) -> dict[str, list[str]]:
    """MetadataIds deleted after schema write number ``after``, by DeletedMetadataFilters name, as asked."""
    out: dict[str, list[str]] = {}
    schema_sequence(emu)  # the log table exists
    rows = emu.store.conn.execute(
        "SELECT body FROM _emulator_schema WHERE kind LIKE 'delete_%' AND n > ? ORDER BY n", (after,)
    )
    for (body,) in rows:
        for kind, ids in json.loads(body).get("deleted", {}).items():
            if DELETED_FILTERS.get(kind, 0) & filters:
                out.setdefault(kind, []).extend(ids)
    return out
