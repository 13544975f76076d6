"""Row operations beyond create/update/delete: status changes, owner assignment and merging duplicates.

* ``set_state``: Dataverse ties each status reason (``statuscode``) to one status (``statecode``): the
  ``State`` of each ``StatusOptionMetadata`` option. Microsoft's advice is to send both together; a reason of another
  status is refused by the server only after the request. Here both are read from the table's
  ``StateAttributeMetadata``/``StatusAttributeMetadata``, labels accepted, and a mismatch refused before sending,
  naming the reasons that do belong. Without a reason, the state's ``DefaultStatus`` is sent (or, where the metadata
  omits it, the first reason of the state, which is Dataverse's default).
* ``assign_entity``: the owner is the ``ownerid`` lookup, bound to a ``systemusers`` or ``teams`` row; only user- or
  team-owned tables have one.
* ``merge_entities``: the unbound ``Merge`` action, documented for account, contact, lead and incident
  (merge-entity-using-web-api.md); ``Target``, ``Subordinate`` and ``UpdateContent`` must carry ``@odata.type``, and
  incident ignores ``UpdateContent``, so values given for it are refused rather than silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector.addressing import not_found
from connector.associations import find_related
from connector.body import build_body, check_fields
from connector.errors import InputError, InputProblem, NotFoundError
from connector.inputs import AssignEntity, MergeEntities, RelatedRow, SetState
from connector.metadata import TableMetadata
from connector.odata import quote_string
from connector.problems import Problems, check_key, check_table

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "MERGEABLE",
    "Choice",
    "assign_entity",
    "assign_entity_problems",
    "merge_entities",
    "merge_entities_problems",
    "set_state",
    "set_state_problems",
    "state_choices",
]

#: Tables the Merge action accepts (merge-entity-using-web-api.md: lead with Sales, incident with Service).
MERGEABLE = ("account", "contact", "lead", "incident")
_OWNERS = ("systemuser", "team")
_CRM = "Microsoft.Dynamics.CRM."


@dataclass(frozen=True)
class Choice:
    """One status or status reason: its value, labels, and the status it belongs to (reasons) or its default reason."""

    value: int
    labels: tuple[str, ...]
    state: int | None = None
    default_status: int | None = None

    def shown(self) -> str:
        return f"{self.labels[0]!r} ({self.value})" if self.labels else str(self.value)


def state_choices(connection: Connection, meta: TableMetadata) -> tuple[list[Choice], list[Choice]]:
    """The table's statuses and status reasons, read from its State and Status attribute metadata."""
    base = f"EntityDefinitions(LogicalName={quote_string(meta.logical_name)})/Attributes"
    found: list[list[Choice]] = []
    for cast, column in (("StateAttributeMetadata", "statecode"), ("StatusAttributeMetadata", "statuscode")):
        body = connection.client.get_json(
            f"{base}/{_CRM}{cast}", params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"}
        )
        options: list[Choice] = []
        for attr in (body or {}).get("value", []):
            if attr.get("LogicalName") != column:
                continue
            for option in (attr.get("OptionSet") or {}).get("Options") or []:
                if isinstance(option.get("Value"), int):
                    options.append(_choice(option))
        found.append(options)
    return found[0], found[1]


def _choice(option: Mapping[str, Any]) -> Choice:
    label = option.get("Label") or {}
    texts = [str(loc.get("Label")) for loc in label.get("LocalizedLabels") or [] if loc.get("Label")]
    user = (label.get("UserLocalizedLabel") or {}).get("Label")
    if user and user not in texts:
        texts.insert(0, str(user))
    state, default = option.get("State"), option.get("DefaultStatus")
    return Choice(
        int(option["Value"]),
        tuple(texts),
        state if isinstance(state, int) else None,
        default if isinstance(default, int) else None,
    )


def _pick(p: Problems, choices: Sequence[Choice], given: int | str, path: str, what: str) -> Choice | None:
    for choice in choices:
        if given == choice.value if isinstance(given, int) else given.strip().lower() in _lower(choice.labels):
            return choice
    valid = ", ".join(c.shown() for c in choices) or "none"
    p.add(path, f"{given!r} is not a {what} of this table; valid: {valid}")
    return None


def _lower(labels: Sequence[str]) -> set[str]:
    return {label.lower() for label in labels}


def _resolve_state(p: Problems, meta: TableMetadata, inputs: SetState) -> tuple[Choice, Choice | None] | None:
    """The status and reason to send (the reason None when neither given nor known); None on a problem."""
    if "statecode" not in meta.attributes or "statuscode" not in meta.attributes:
        p.add("$.table", f"{meta.logical_name!r} has no statecode and statuscode columns: its rows have no status")
        return None
    states, statuses = state_choices(p.connection, meta)
    state = _pick(p, states, inputs.state, "$.state", "status (statecode)")
    if state is None:
        return None
    belongs = [s for s in statuses if s.state == state.value]
    if inputs.status is None:
        default = next((s for s in belongs if s.value == state.default_status), belongs[0] if belongs else None)
        return state, default
    status = _pick(p, statuses, inputs.status, "$.status", "status reason (statuscode)")
    if status is None:
        return None
    if status.state != state.value:
        owner = next((s for s in states if s.value == status.state), None)
        p.add(
            "$.status",
            f"status reason {status.shown()} belongs to status {owner.shown() if owner else status.state}, not "
            f"{state.shown()}; reasons of {state.shown()}: {', '.join(s.shown() for s in belongs) or 'none'}",
        )
        return None
    return state, status


def set_state_problems(inputs: SetState, connection: Connection) -> list[InputProblem]:
    """Phase two of ``set_state``: a status and a reason of this table, the reason one of the status's."""
    p = Problems(connection)
    meta = check_table(p, inputs.table, inputs.key)
    if meta is not None:
        _resolve_state(p, meta, inputs)
    return p.items


def set_state(connection: Connection, inputs: SetState) -> dict[str, Any]:
    """PATCH statecode with statuscode (``If-Match: *``: a status change never creates a row)."""
    meta = connection.metadata.table(inputs.table)
    p = Problems(connection)
    resolved = _resolve_state(p, meta, inputs)
    if resolved is None:
        raise InputError(p.items)
    state, status = resolved
    body = {"statecode": state.value} | ({"statuscode": status.value} if status else {})
    target, row_id = find_related(connection, _row(inputs.table, inputs.id, inputs.key), inputs.impersonate)
    _patch(connection, target, row_id, body, inputs.impersonate, inputs)
    return {"table": meta.logical_name, "id": row_id, "state": state.value, "status": status.value if status else None}


def _row(table: str, id_: str | None, key: dict[str, Any] | None) -> RelatedRow:
    return RelatedRow(table=table, id=id_, key=key)


def _patch(
    connection: Connection,
    meta: TableMetadata,
    row_id: str,
    body: Mapping[str, Any],
    impersonate: str | None,
    inputs: SetState | AssignEntity,
) -> None:
    try:
        connection.client.request(
            "PATCH", f"{meta.entity_set}({row_id})", json=body, headers={"If-Match": "*"}, impersonate=impersonate
        )
    except NotFoundError as exc:
        raise not_found(meta, id=inputs.id, key=inputs.key, cause=exc) from None


# -- assign -----------------------------------------------------------------------------------------------------------
def assign_entity_problems(inputs: AssignEntity, connection: Connection) -> list[InputProblem]:
    """Phase two of ``assign_entity``: a table with owners, and an owner that is a user or a team."""
    p = Problems(connection)
    meta = check_table(p, inputs.table, inputs.key)
    if meta is None:
        return p.items
    if "ownerid" not in meta.attributes:
        p.add("$.table", f"{meta.logical_name!r} is organization-owned: its rows have no owner to assign")
    owner = p.table(inputs.owner.table, "$.owner.table")
    if owner is None:
        return p.items
    if owner.logical_name not in _OWNERS:
        p.add("$.owner.table", f"an owner is a systemuser or a team, not {owner.logical_name!r}")
    elif inputs.owner.key:
        check_key(p, owner, inputs.owner.key, "$.owner.key")
    return p.items


def assign_entity(connection: Connection, inputs: AssignEntity) -> dict[str, Any]:
    """PATCH ``ownerid@odata.bind`` to the user's or team's row (found by key first when given by key)."""
    meta = connection.metadata.table(inputs.table)
    owner, owner_id = find_related(connection, inputs.owner, inputs.impersonate)
    _, row_id = find_related(connection, _row(inputs.table, inputs.id, inputs.key), inputs.impersonate)
    body = {"ownerid@odata.bind": f"{owner.entity_set}({owner_id})"}
    _patch(connection, meta, row_id, body, inputs.impersonate, inputs)
    return {"table": meta.logical_name, "id": row_id, "owner_table": owner.logical_name, "owner_id": owner_id}


# -- merge ------------------------------------------------------------------------------------------------------------
def merge_entities_problems(inputs: MergeEntities, connection: Connection) -> list[InputProblem]:
    """Phase two of ``merge_entities``: a table Merge accepts, two different rows, values the target takes."""
    p = Problems(connection)
    meta = check_table(p, inputs.table, inputs.key)
    if meta is None:
        return p.items
    if meta.logical_name not in MERGEABLE:
        p.add("$.table", f"Merge accepts {', '.join(MERGEABLE)} rows, not {meta.logical_name!r}")
        return p.items
    sub = inputs.subordinate
    if sub.key:
        check_key(p, meta, sub.key, "$.subordinate.key")
    if sub.id is not None and sub.id.lower() == (inputs.id or "").lower():
        p.add("$.subordinate.id", "the subordinate is the target itself: give the duplicate's id")
    if inputs.update_content:
        if meta.logical_name == "incident":
            p.add("$.update_content", "Dataverse ignores UpdateContent when merging cases: update the case instead")
        else:
            check_fields(p, meta, inputs.update_content, "$.update_content", for_create=False)
    return p.items


def merge_entities(connection: Connection, inputs: MergeEntities) -> dict[str, Any]:
    """POST the unbound ``Merge`` action with typed Target, Subordinate and UpdateContent."""
    meta = connection.metadata.table(inputs.table)
    impersonate = inputs.impersonate
    _, target_id = find_related(connection, _row(inputs.table, inputs.id, inputs.key), impersonate)
    sub = inputs.subordinate
    _, sub_id = find_related(connection, _row(inputs.table, sub.id, sub.key), impersonate)
    if sub_id.lower() == target_id.lower():
        raise InputError([InputProblem("$.subordinate", "the subordinate is the target itself: give the duplicate")])
    typed = {"@odata.type": f"{_CRM}{meta.logical_name}"}
    body: dict[str, Any] = {
        "Target": typed | {meta.primary_id: target_id},
        "Subordinate": typed | {meta.primary_id: sub_id},
        "PerformParentingChecks": inputs.perform_parenting_checks,
    }
    if inputs.update_content:
        fields = build_body(
            connection, meta, inputs.update_content, "$.update_content", for_create=False, impersonate=impersonate
        )
        body["UpdateContent"] = typed | fields
    connection.client.request("POST", "Merge", json=body, impersonate=impersonate)
    return {"table": meta.logical_name, "id": target_id, "subordinate_id": sub_id}
