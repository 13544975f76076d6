"""The actions, functions and complex types of a ``$metadata`` document (CSDL), as plain data.

Why only these: entity types are read from ``EntityDefinitions`` (:mod:`connector.metadata`), which carries what
CSDL lacks (labels, option sets, keys); a message's parameters and return type exist only in CSDL
(``webapi/web-api-service-documents.md``). Real ``$metadata`` documents run to megabytes, so the document is parsed
once per connection (:meth:`connector.metadata.MetadataCache.operations`) and only these elements are kept.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

# defusedxml ships no type stubs (types-defusedxml is not in the lock); its calls return ElementTree elements
import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]
from defusedxml import DefusedXmlException

__all__ = ["Catalog", "Operation", "Parameter", "element_type", "is_collection", "parse"]

_EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
_NAMESPACES = ("Microsoft.Dynamics.CRM.", "mscrm.")


@dataclass(frozen=True)
class Parameter:
    """A parameter or a complex type's property: its name, its type as CSDL writes it, whether null is allowed."""

    name: str
    type: str
    nullable: bool = True


@dataclass(frozen=True)
class Operation:
    """One action or function. ``binding`` is the binding parameter's type (``mscrm.lead``,
    ``Collection(mscrm.account)``), None when unbound; ``params`` leaves the binding parameter out."""

    name: str
    kind: str  # "action" or "function"
    params: tuple[Parameter, ...]
    returns: str | None
    binding: str | None

    @property
    def bound_table(self) -> str | None:
        """The logical name of the table (or ``crmbaseentity``) the operation is bound to; None when unbound."""
        return element_type(self.binding) if self.binding else None

    @property
    def collection_bound(self) -> bool:
        return bool(self.binding and is_collection(self.binding))

    @property
    def binding_kind(self) -> str:
        """``unbound``, ``row`` (bound to one row) or ``collection`` (bound to a table's entity set)."""
        if self.binding is None:
            return "unbound"
        return "collection" if self.collection_bound else "row"


@dataclass(frozen=True)
class Catalog:
    """Every operation (by name; a name may be bound to several tables) and every complex type."""

    operations: dict[str, tuple[Operation, ...]]
    complex_types: dict[str, tuple[Parameter, ...]]
    #: enum types by name: member names (sent as strings in a body, ``Microsoft.Dynamics.CRM.T'Member'`` in a URL)
    enum_types: dict[str, tuple[str, ...]]


def is_collection(typ: str) -> bool:
    return typ.startswith("Collection(") and typ.endswith(")")


def element_type(typ: str) -> str:
    """``Collection(mscrm.account)`` -> ``account``; ``Edm.String`` stays ``Edm.String``."""
    inner = typ[len("Collection(") : -1] if is_collection(typ) else typ
    for ns in _NAMESPACES:
        if inner.startswith(ns):
            return inner[len(ns) :]
    return inner


def _parameter(node: ET.Element) -> Parameter:
    return Parameter(node.get("Name", ""), node.get("Type", ""), node.get("Nullable", "true").lower() != "false")


def _operation(node: ET.Element, kind: str) -> Operation:
    params = [_parameter(p) for p in node.findall(f"{_EDM}Parameter")]
    returns = node.find(f"{_EDM}ReturnType")
    bound = node.get("IsBound", "false").lower() == "true" and bool(params)
    return Operation(
        node.get("Name", ""),
        kind,
        tuple(params[1:] if bound else params),
        returns.get("Type") if returns is not None else None,
        params[0].type if bound else None,
    )


def parse(text: str | bytes) -> Catalog:
    """Actions, functions and complex types of a CSDL document; anything else is skipped.

    ``ValueError`` for a document that is not XML, or that declares a DTD or entities (an answer is untrusted: no
    entity expansion); the caller says where it came from."""
    try:
        root: ET.Element = SafeET.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise ValueError(f"the $metadata document is not XML: {exc}") from None
    operations: dict[str, list[Operation]] = {}
    complex_types: dict[str, tuple[Parameter, ...]] = {}
    enum_types: dict[str, tuple[str, ...]] = {}
    for schema in root.iter(f"{_EDM}Schema"):
        for node in schema:
            if node.tag == f"{_EDM}Action" or node.tag == f"{_EDM}Function":
                op = _operation(node, "action" if node.tag.endswith("Action") else "function")
                operations.setdefault(op.name, []).append(op)
            elif node.tag == f"{_EDM}ComplexType":
                props = tuple(_parameter(p) for p in node.findall(f"{_EDM}Property"))
                complex_types[node.get("Name", "")] = props
            elif node.tag == f"{_EDM}EnumType":
                enum_types[node.get("Name", "")] = tuple(m.get("Name", "") for m in node.findall(f"{_EDM}Member"))
    return Catalog({name: tuple(ops) for name, ops in operations.items()}, complex_types, enum_types)
