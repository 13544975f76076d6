"""Dataverse error bodies and the exception that carries them out of handlers.

Why one exception type: every refusal must leave with Dataverse's exact status, hex code and message
(``{"error":{"code":"0x...","message":"..."}}``); raising it anywhere in the stack keeps handlers linear.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from starlette.responses import Response

JSON_CT = "application/json; odata.metadata=minimal"


class DataverseError(Exception):
    """A Web API refusal: HTTP status, Dataverse hex code (may be ``""`` or ``"0x0"``), message, extra headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(err: DataverseError, wants: Callable[[str], bool] | None = None) -> Response:
    """Render the error the way Dataverse does: JSON body, OData-Version and a REQ_ID header. ``wants`` tells which
    ``Microsoft.PowerApps.CDS.*`` annotations the client asked for with ``Prefer: odata.include-annotations``."""
    error: dict[str, str] = {"code": err.code, "message": err.message}
    if wants is not None:
        hexcode = err.code[2:].lower() if err.code.startswith("0x") else ""
        if hexcode and wants("Microsoft.PowerApps.CDS.HelpLink"):
            error["@Microsoft.PowerApps.CDS.HelpLink"] = (
                "http://go.microsoft.com/fwlink/?LinkID=398563&error=Microsoft.Crm.CrmException%3a"
                f"{hexcode}&client=platform"
            )
        if wants("Microsoft.PowerApps.CDS.InnerError.Message"):
            error["@Microsoft.PowerApps.CDS.InnerError.Message"] = err.message
    body = json.dumps({"error": error}).encode()
    req_id = str(uuid.uuid4())
    headers = {"OData-Version": "4.0", "REQ_ID": req_id, "x-ms-service-request-id": req_id, **err.headers}
    return Response(body, status_code=err.status, media_type=JSON_CT, headers=headers)


# -- factories for the documented cases (dataverse-web-api.md section 11.3 and 15) ----------------------------------


def not_found(entity: str, rid: str) -> DataverseError:
    return DataverseError(404, "0x80040217", f"{entity} With Id = {rid} Does Not Exist")


def key_not_found(entity: str) -> DataverseError:
    return DataverseError(
        404, "0x80060891", f"A record with the specified key values does not exist in {entity} entity"
    )


def duplicate_record() -> DataverseError:
    return DataverseError(412, "0x80040237", "A record with matching key values already exists.")


def version_mismatch() -> DataverseError:
    return DataverseError(
        412, "0x80060882", "The version of the existing record doesn't match the RowVersion property provided."
    )


def segment_not_found(segment: str) -> DataverseError:
    return DataverseError(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")


def no_resource(url: str) -> DataverseError:
    return DataverseError(404, "", f"No HTTP resource was found that matches the request URI '{url}'.")


def unknown_property(name: str, entity: str) -> DataverseError:
    return DataverseError(
        400, "0x0", f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{entity}'."
    )


def invalid_payload_property(name: str, entity: str) -> DataverseError:
    return DataverseError(
        400,
        "0x0",
        "An error occurred while validating input parameters: Microsoft.Crm.CrmException: "
        f"Invalid property '{name}' was found in entity 'Microsoft.Dynamics.CRM.{entity}'. ---> "
        "Microsoft.OData.ODataException: Does not support untyped value in non-open type.",
    )


def undeclared_bind(name: str, entity_set: str) -> DataverseError:
    return DataverseError(
        400,
        "0x80048d19",
        f"Error identified in Payload provided by the user for Entity :'{entity_set}', For more information on this "
        "error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  InnerException : "
        f"Microsoft.OData.ODataException: An undeclared property '{name}' which only has property annotations in the "
        "payload but no property value was found in the payload. In OData, only declared navigation properties and "
        "declared named streams can be represented as properties without values.",
    )


def payload_error(entity_set: str, inner: str) -> DataverseError:
    return DataverseError(
        400,
        "0x80048d19",
        f"Error identified in Payload provided by the user for Entity :'{entity_set}', For more information on this "
        "error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  "
        f"InnerException : {inner}",
    )


def bad_key(entity: str) -> DataverseError:
    return DataverseError(
        400,
        "0x80060888",
        f"The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.{entity}'. Ensure that the "
        f"names and number of key properties match the declared or alternate key properties for the resource "
        f"'Microsoft.Dynamics.CRM.{entity}'.",
    )


#: fetchxml/reference/link-entity.md "Limitations": at most 15 link-entity elements (joins) per query.
MAX_LINK_ENTITIES = 15


def too_many_link_entities() -> DataverseError:
    """The documented refusal of a query with more than 15 joins (0x8004430D; the HTTP status 400 is a GUESS).
    Web API lookup paths and ``any``/``all`` nesting are joins on the service too, so they share it (GUESS)."""
    return DataverseError(400, "0x8004430D", "Number of link entities in query exceeded maximum limit.")


def bad_request(message: str, code: str = "0x80060888") -> DataverseError:
    return DataverseError(400, code, message)


def unauthenticated(www_authenticate: str) -> DataverseError:
    return DataverseError(401, "0x80044302", "Request is not authenticated.", {"WWW-Authenticate": www_authenticate})
