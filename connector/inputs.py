"""Typed action inputs: what an action's hook hands to the library once the runtime has validated the JSON.

The JSON Schemas in ``schemas/actions/`` stay the source of truth (builders render forms from them; the runtime
validates against them). These models only give the library attribute access with real types instead of
``inputs.get(...)`` with a guessed default, so a reader goes from ``manifest.json`` to the request without a
dictionary: ``upsert_entity`` is the action, the hook, the schema, the model :class:`UpsertEntity` and the library
function :func:`connector.records.upsert_entity`.

They are built *after* the schema check, in strict mode, so nothing is coerced (``"123"`` never becomes a number) and
an unknown property fails loudly: a model that disagrees with its schema is our bug, reported as
:class:`~connector.errors.ContractError`, never a user's. ``tests/test_inputs.py`` proves that every model's fields,
required set, defaults and JSON types equal its schema's, so the two cannot drift apart silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from connector.errors import ContractError, InputError, InputProblem, preview
from connector.strict_json import StrictJsonError, check_value

__all__ = [
    "GUID",
    "INPUT_MODELS",
    "ActionInputs",
    "AssignEntity",
    "AssociateEntities",
    "CreateAlternateKey",
    "CreateAttribute",
    "CreateEntity",
    "DeleteEntity",
    "DisassociateEntities",
    "DownloadFile",
    "Expand",
    "GetAttribute",
    "GetCurrentUser",
    "GetEntitiesMetadata",
    "GetEntity",
    "GetEntityMetadata",
    "InvokeAction",
    "InvokeFunction",
    "JsonInt",
    "ListAlternateKeys",
    "ListAttributes",
    "ListEntities",
    "ListEntityTypes",
    "MergeEntities",
    "OtherRow",
    "QueryAttributes",
    "QueryEntities",
    "RawRequest",
    "RelatedRow",
    "RunBatchOperations",
    "RunFetchXmlQuery",
    "SetState",
    "TestConnection",
    "UpdateAttribute",
    "UpdateEntity",
    "UploadFile",
    "UpsertEntity",
    "WriteEntities",
    "json_integer",
]


def json_integer(value: Any) -> Any:
    """JSON Schema counts ``5.0`` as an integer and the schema is checked first, so a model takes it too (as 5);
    strict mode still refuses ``"5"`` and ``5.5``."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: An integer as JSON Schema means it: a whole-number float is accepted, a string or a fraction is not.
JsonInt = Annotated[int, BeforeValidator(json_integer)]


class _Strict(BaseModel):
    """Frozen, strict, closed: the shape every typed input shares. A refusal never echoes the value given (a header
    or a field may hold something private)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", hide_input_in_errors=True)


#: A row id as the schemas' ``guid`` pattern states it: anything else would become a path in the URL.
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _one_of_id_or_key(id_: str | None, key: Mapping[str, Any] | None, path: str) -> None:
    """The rule the input schemas state with ``anyOf``/``dependentSchemas``, for models built in code: the runtime
    never gets here with both or neither, a library caller may, and gets the same input error (not a pydantic one)."""
    if id_ is not None and key:
        raise InputError([InputProblem(f"{path}.id", "give either id or key, not both")])
    if id_ is None and not key:
        raise InputError([InputProblem(f"{path}.id", "give id or key")])
    if id_ is not None and not GUID.fullmatch(id_):
        # The schema's pattern, for models built in code: an id is written into the URL (``set(../../x)``).
        raise InputError([InputProblem(f"{path}.id", f"{preview(id_)} is not a row id: give a GUID")])


class ActionInputs(_Strict):
    """Base of every action's inputs; :meth:`of` builds one from the runtime's validated mapping."""

    #: Inputs whose values are checked one by one later, so one bad item fails alone (``write_entities`` records).
    checked_per_item: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _sendable(cls, data: Any) -> Any:
        """``NaN``, ``Infinity`` and lone surrogates pass a JSON Schema and every pydantic type, then fail in the
        middle of a request (``ValueError`` from ``json.dumps``, ``UnicodeEncodeError`` from httpx): refused here, for
        Python callers too, as an input error naming the field."""
        shown = data
        if cls.checked_per_item and isinstance(data, Mapping):
            shown = {k: v for k, v in data.items() if k not in cls.checked_per_item}
        try:
            check_value(shown)
        except StrictJsonError as exc:
            raise InputError([InputProblem(exc.path, exc.reason)]) from None
        return data

    @classmethod
    def of(cls, inputs: Mapping[str, Any]) -> Self:
        """The typed inputs of validated JSON; a mismatch is a contract bug (the schema let through what we refuse)."""
        try:
            return cls.model_validate(dict(inputs))
        except ValidationError as exc:
            problems = [f"{'.'.join(map(str, e['loc'])) or '$'}: {e['msg']}" for e in exc.errors()]
            raise ContractError([f"{cls.__name__} disagrees with its input schema: {p}" for p in problems]) from None


# -- shared parts -----------------------------------------------------------------------------------------------------
class Expand(_Strict):
    """A navigation property to expand, with the related table's columns to return."""

    navigation: str
    select: list[str] | None = None


class RelatedRow(_Strict):
    """The other row of an association, by id or alternate key."""

    table: str
    id: str | None = None
    key: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _by_id_or_key(self) -> Self:
        _one_of_id_or_key(self.id, self.key, "$.related")
        return self


class _Addressed(ActionInputs):
    """A row of ``table`` named by id or by alternate key (exactly one)."""

    table: str
    id: str | None = None
    key: dict[str, Any] | None = None
    impersonate: str | None = None

    @model_validator(mode="after")
    def _by_id_or_key(self) -> Self:
        _one_of_id_or_key(self.id, self.key, "$")
        return self


# -- records ----------------------------------------------------------------------------------------------------------
class GetEntity(_Addressed):
    select: list[str] | None = None
    expand: list[Expand] | None = None
    include_annotations: bool = False


class CreateEntity(ActionInputs):
    table: str
    fields: dict[str, Any]
    id: str | None = None
    client_id: bool = False
    return_record: bool = True
    select: list[str] | None = None
    detect_duplicates: bool = False
    include_annotations: bool = False
    impersonate: str | None = None


class UpdateEntity(_Addressed):
    fields: dict[str, Any]
    etag: str | None = None
    return_record: bool = False
    select: list[str] | None = None
    include_annotations: bool = False


class UpsertEntity(_Addressed):
    fields: dict[str, Any]
    mode: Literal["upsert", "create_only", "update_only"] = "upsert"
    return_record: bool = False
    select: list[str] | None = None
    include_annotations: bool = False


class DeleteEntity(_Addressed):
    etag: str | None = None
    ignore_missing: bool = False


class QueryEntities(ActionInputs):
    table: str
    select: list[str] | None = None
    filter: str | None = None
    where: list[dict[str, Any]] | None = None
    order_by: list[str] | None = None
    expand: list[Expand] | None = None
    top: JsonInt | None = None
    page_size: JsonInt = 100
    page_token: str | None = None
    fetch_all: bool = False
    max_records: JsonInt = 50000
    include_count: bool = False
    include_annotations: bool = False
    impersonate: str | None = None


class AssociateEntities(_Addressed):
    navigation: str
    related: RelatedRow


class DisassociateEntities(_Addressed):
    navigation: str
    related: RelatedRow | None = None


# -- file and image columns, state, owner, merge -------------------------------------------------------------------
class UploadFile(_Addressed):
    column: str
    file_path: str | None = None
    content_base64: str | None = None
    file_name: str | None = None
    chunked: bool = False


class DownloadFile(_Addressed):
    column: str
    save_to: str | None = None
    overwrite: bool = False
    full_size: bool = False


class SetState(_Addressed):
    state: JsonInt | str
    status: JsonInt | str | None = None


class AssignEntity(_Addressed):
    owner: RelatedRow


class OtherRow(_Strict):
    """Another row of the action's own table, by id or alternate key (the subordinate of a merge)."""

    id: str | None = None
    key: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _by_id_or_key(self) -> Self:
        _one_of_id_or_key(self.id, self.key, "$.subordinate")
        return self


class MergeEntities(_Addressed):
    subordinate: OtherRow
    update_content: dict[str, Any] | None = None
    perform_parenting_checks: bool = False


# -- batch, bulk, FetchXML, raw, users ---------------------------------------------------------------------------------
class RunBatchOperations(ActionInputs):
    operations: list[dict[str, Any]]
    continue_on_error: bool = True
    include_annotations: bool = False
    impersonate: str | None = None


class WriteEntities(ActionInputs):
    checked_per_item = frozenset({"records"})  # a bad record fails by itself: connector.bulk.refused_records

    table: str
    mode: Literal["create", "update", "upsert", "delete", "deactivate"]
    records: list[dict[str, Any]]
    chunk_size: JsonInt = 1000
    client_ids: bool = True
    bypass_business_logic: list[Literal["CustomSync", "CustomAsync"]] = []
    bypass_custom_plugins: bool = False
    suppress_callback_registration_expander_job: bool = False
    impersonate: str | None = None


class SyncRecords(ActionInputs):
    """A sync definition and how to run it; the definition's own model (:class:`connector.sync.definition.
    SyncDefinition`, one layer up) types and checks the nested parts."""

    name: str
    source: dict[str, Any]
    target: str
    match: dict[str, Any]
    mode: Literal["upsert", "insert", "update", "mirror"] = "upsert"
    mapping: list[dict[str, Any]]
    batch_size: JsonInt = 100
    parallelism: JsonInt | None = None
    bypass_business_logic: list[Literal["CustomSync", "CustomAsync"]] = []
    bypass_custom_plugins: bool = False
    delete: Literal["auto", "remove", "deactivate", "clear"] = "auto"
    max_delete_fraction: float = 0.2
    destination_filter: dict[str, Any] | None = None
    audience: dict[str, Any] | None = None
    state: str | None = None
    full: bool = False
    force: bool = False
    dry_run: bool = False


class RunFetchXmlQuery(ActionInputs):
    fetch_xml: str
    table: str | None = None
    page_size: JsonInt | None = None
    page: JsonInt | None = None
    page_token: str | None = None
    fetch_all: bool = False
    max_records: JsonInt = 50000
    include_annotations: bool = False
    impersonate: str | None = None


class RawRequest(ActionInputs):
    path: str
    method: Literal["GET", "POST", "PATCH", "PUT", "DELETE"] = "GET"
    data: Any = None
    form_data: dict[str, str | int | float | bool] | None = None
    file_data: list[dict[str, Any]] | None = None
    query: dict[str, str | int | float | bool] | None = None
    headers: dict[str, str] | None = None
    response_type: Literal["json", "text", "binary"] = "json"
    timeout: float | None = None
    max_retries: JsonInt = 0
    retry_delay_ms: JsonInt = 1000
    exponential_backoff: bool = False
    retry_on_all_errors: bool = False
    impersonate: str | None = None


class InvokeAction(ActionInputs):
    """Any action by name: unbound (no ``table``), bound to a table's collection (``table``) or to a row (``table``
    with ``id`` or ``key``); ``parameters`` by the names ``$metadata`` gives them."""

    name: str
    table: str | None = None
    id: str | None = None
    key: dict[str, Any] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    impersonate: str | None = None


class InvokeFunction(InvokeAction):
    """Any function by name, addressed as :class:`InvokeAction`; its parameters travel in the URL."""


class GetCurrentUser(ActionInputs):
    impersonate: str | None = None


class TestConnection(ActionInputs):
    __test__ = False  # a model, not a test class, whatever pytest makes of its name


# -- metadata -------------------------------------------------------------------------------------------------------
class ListEntities(ActionInputs):
    include_custom: bool = True
    top_level_only: bool = False
    include_details: bool = False


class ListEntityTypes(ActionInputs):
    page_size: JsonInt = 5000
    page_token: str | None = None
    fetch_all: bool = False


class GetEntityMetadata(ActionInputs):
    table: str
    by: Literal["logical_name", "entity_set_name"] = "logical_name"
    select: list[str] | None = None
    expand: list[Literal["attributes", "keys", "relationships"]] | None = None


class GetEntitiesMetadata(ActionInputs):
    default_selected: list[str] | None = None
    filter: str | None = None
    include_all_custom: bool = True
    top_level_only: bool = False


class CreateAttribute(ActionInputs):
    table: str
    attribute: dict[str, Any]
    solution: str | None = None


class GetAttribute(ActionInputs):
    table: str
    attribute: str
    select: list[str] | None = None


class UpdateAttribute(ActionInputs):
    table: str
    attribute: str
    label: str | None = None
    description: str | None = None
    language_code: JsonInt = 1033
    required: Literal["none", "recommended", "required"] | None = None
    max_length: JsonInt | None = None
    changes: dict[str, Any] | None = None
    merge_labels: bool = True
    publish: bool = True
    solution: str | None = None


class ListAttributes(ActionInputs):
    table: str
    types: list[str] | None = None
    custom_only: bool = False
    select: list[str] | None = None


class QueryAttributes(ActionInputs):
    table: str
    cast: str | None = None
    select: list[str] | None = None
    filter: str | None = None
    expand: str | None = None


class CreateAlternateKey(ActionInputs):
    table: str
    schema_name: str
    columns: list[str]
    label: str | None = None
    wait_until_active: bool = False
    timeout_s: float = 300
    poll_interval_s: float = 5
    solution: str | None = None


class ListAlternateKeys(ActionInputs):
    table: str


#: The typed inputs of each action that has them, by action id.
INPUT_MODELS: dict[str, type[ActionInputs]] = {
    "get_entity": GetEntity,
    "create_entity": CreateEntity,
    "update_entity": UpdateEntity,
    "upsert_entity": UpsertEntity,
    "delete_entity": DeleteEntity,
    "query_entities": QueryEntities,
    "associate_entities": AssociateEntities,
    "disassociate_entities": DisassociateEntities,
    "upload_file": UploadFile,
    "download_file": DownloadFile,
    "set_state": SetState,
    "assign_entity": AssignEntity,
    "merge_entities": MergeEntities,
    "run_batch_operations": RunBatchOperations,
    "write_entities": WriteEntities,
    "sync_records": SyncRecords,
    "run_fetch_xml_query": RunFetchXmlQuery,
    "raw_request": RawRequest,
    "invoke_action": InvokeAction,
    "invoke_function": InvokeFunction,
    "get_current_user": GetCurrentUser,
    "test_connection": TestConnection,
    "list_entities": ListEntities,
    "list_entity_types": ListEntityTypes,
    "get_entity_metadata": GetEntityMetadata,
    "get_entities_metadata": GetEntitiesMetadata,
    "create_attribute": CreateAttribute,
    "get_attribute": GetAttribute,
    "update_attribute": UpdateAttribute,
    "list_attributes": ListAttributes,
    "query_attributes": QueryAttributes,
    "create_alternate_key": CreateAlternateKey,
    "list_alternate_keys": ListAlternateKeys,
}
