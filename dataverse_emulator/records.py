"""Converting between JSON payloads, SQLite rows and Dataverse JSON entities.

Why separate from routing: create, update, upsert, deep reads and the admin seed all need the same type checks,
computed columns and annotation rules, and Dataverse is strict about each (lengths, option values, navigation names).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from typing import Any

from . import errors
from .model import Attribute, Table
from .query import fmt_dt

FORMATTED = "OData.Community.Display.V1.FormattedValue"
ASSOC_NAV = "Microsoft.Dynamics.CRM.associatednavigationproperty"
LOOKUP_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"


def etag(version: int | None) -> str:
    return f'W/"{version}"'


def parse_datetime(value: str, attr: Attribute) -> str:
    """Validate and normalise an ISO datetime (or date) into the canonical UTC storage text."""
    try:
        if attr.date_only:
            return dt.date.fromisoformat(value[:10]).isoformat()
        if len(value) == 10:
            return fmt_dt(dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC))
        return fmt_dt(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise errors.bad_request(
            f"Cannot convert the literal '{value}' to the expected type 'Edm.DateTimeOffset'.", "0x0"
        ) from None


def convert(table: Table, attr: Attribute, value: Any, entity_set: str) -> Any:
    """A JSON value for ``attr`` as stored in SQLite, or a Dataverse error."""
    if value is None:
        return None
    t = attr.type
    edm = {
        "String": "Edm.String",
        "Memo": "Edm.String",
        "Integer": "Edm.Int32",
        "BigInt": "Edm.Int64",
        "Picklist": "Edm.Int32",
        "State": "Edm.Int32",
        "Status": "Edm.Int32",
        "Boolean": "Edm.Boolean",
        "Money": "Edm.Decimal",
        "Decimal": "Edm.Decimal",
        "Double": "Edm.Double",
        "DateTime": "Edm.DateTimeOffset",
        "Uniqueidentifier": "Edm.Guid",
        "EntityName": "Edm.String",
    }.get(t, "Edm.String")

    def wrong() -> errors.DataverseError:
        return errors.payload_error(
            entity_set,
            f"Microsoft.OData.ODataException: Cannot convert the literal '{value}' to the expected type '{edm}'.",
        )

    if t in ("String", "Memo", "EntityName"):
        if not isinstance(value, str):
            raise wrong()
        if attr.max_length is not None and len(value) > attr.max_length:
            raise errors.DataverseError(
                400,
                "0x80044331",
                f"A validation error occurred.  The length of the '{attr.name}' attribute of the "
                f"'{table.logical_name}' "
                f"entity exceeded the maximum allowed length of '{attr.max_length}'.",
            )
        return value
    if t in ("Integer", "BigInt", "Picklist", "State", "Status"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        if t in ("Picklist", "State", "Status") and attr.options is not None and value not in attr.options:
            raise errors.DataverseError(400, "0x8004431a", "The picklist value is out of the range.")
        return value
    if t == "Boolean":
        if not isinstance(value, bool):
            raise wrong()
        return int(value)
    if t in ("Money", "Decimal", "Double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong()
        return float(value)
    if t == "DateTime":
        if not isinstance(value, str):
            raise wrong()
        return parse_datetime(value, attr)
    if t == "Uniqueidentifier":
        import uuid

        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise wrong() from None
    return value


def computed(table: Table, row: dict[str, Any]) -> None:
    """Columns Dataverse computes on write: ``fullname`` from first and last name."""
    if "fullname" in table.attributes and ("firstname" in row or "lastname" in row):
        parts = [row.get("firstname"), row.get("lastname")]
        row["fullname"] = " ".join(p for p in parts if p) or None
    if "activitytypecode" in table.attributes and "activitytypecode" not in row:
        row["activitytypecode"] = table.logical_name
    for a in table.attributes.values():
        # money in the organization's base currency: value / exchange rate (1 while no other currency is chosen)
        base_of = a.extra.get("AttributeOf") if a.type == "Money" else None
        if base_of in row:
            v = row[base_of]
            row[a.name] = None if v is None else v / float(row.get("exchangerate") or 1.0)


class AnnotationFilter:
    """Which instance annotations the client asked for with ``Prefer: odata.include-annotations``."""

    def __init__(self, spec: str | None) -> None:
        self.patterns = [p.strip().strip('"') for p in spec.split(",")] if spec else []

    def wants(self, term: str) -> bool:
        for p in self.patterns:
            if p.startswith("-"):
                if fnmatch.fnmatchcase(term, p[1:]):
                    return False
                continue
            if p == "*" or fnmatch.fnmatchcase(term, p):
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.patterns)


def money_text(v: float) -> str:
    return f"${v:,.2f}" if v >= 0 else f"-${-v:,.2f}"


def formatted(attr: Attribute, v: Any) -> str | None:
    """The FormattedValue annotation text (en-US, UTC) for a stored value."""
    if v is None:
        return None
    t = attr.type
    if t in ("Picklist", "State", "Status") and attr.options:
        return attr.options.get(int(v))
    if t == "Boolean":
        return "Yes" if v else "No"
    if t == "Money":
        return money_text(float(v))
    if t in ("Integer", "BigInt"):
        return f"{int(v):,}"
    if t in ("Decimal", "Double"):
        return f"{float(v):,.2f}"
    if t == "DateTime":
        if attr.date_only or len(str(v)) == 10:
            d = dt.date.fromisoformat(str(v)[:10])
            return f"{d.month}/{d.day}/{d.year}"
        d2 = dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
        hour = d2.hour % 12 or 12
        return f"{d2.month}/{d2.day}/{d2.year} {hour}:{d2.minute:02d} {'AM' if d2.hour < 12 else 'PM'}"
    return None


def json_value(attr: Attribute, v: Any) -> Any:
    if v is None:
        return None
    if attr.type == "Boolean":
        return bool(v)
    return v


def lookup_nav(attr: Attribute, target: str | None) -> str:
    """The navigation property behind a lookup value: ``customerid_account`` for polymorphic ones."""
    if len(attr.targets) > 1 and attr.type != "Owner" and target:
        return f"{attr.name}_{target}{attr.nav_suffix}"
    return attr.name
