"""The system messages the emulator implements (``QualifyLead``, ``WinOpportunity``, ``RetrieveVersion``,
``CalculateRollupField``), the sample custom API ``sample_ApplyDiscount`` and the tables they need
(``opportunityclose``, ``customapi``, ``customapirequestparameter``, ``customapiresponseproperty``).

Why here and not in the record code: each message is a small business operation over several tables; registering
it in :mod:`.messages` lists it in ``$metadata`` and routes it, and nothing else needs to know it exists.
Doc paths are in ``BEHAVIOURS.md`` ("Messages").
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any

from . import errors
from .context import VERSION, Ctx, fmt_dt_now
from .errors import DataverseError
from .messages import ACTION, CUSTOM_HANDLERS, FUNCTION, NS, Bound, Message, Param, entity_ref, register, respond
from .model import meta_id

if TYPE_CHECKING:
    from starlette.responses import Response

    from .record_writes import RecordApi
    from .storage import Store


def _invalid(message: str) -> DataverseError:
    return DataverseError(400, "0x80040203", message)


def _create(api: RecordApi, ctx: Ctx, table: str, data: dict[str, Any], links: dict[str, tuple[str, str]]) -> str:
    """A row created as the caller, with lookups set directly (``links``: column -> (table, id))."""
    keys: dict[str, Any] = {}
    for col, (target, rid) in links.items():
        keys[col], keys[f"{col}__type"] = rid, target
    rid, _row = api.do_create(ctx, api.tables[table], data, key_values=keys)
    return rid


# -- QualifyLead ------------------------------------------------------------------------------------------------------


async def qualify_lead(api: RecordApi, ctx: Ctx, bound: Bound | None, p: dict[str, Any], msg: Message) -> Response:
    """Creates the account, contact and opportunity asked for from the lead's values, links them to the lead and
    closes it as qualified; answers the created rows as entity references (webapi/use-web-api-actions.md)."""
    assert bound is not None and bound.rid is not None and bound.row is not None
    lead, lid = bound.row, bound.rid
    if lead.get("statecode") != 0:
        raise _invalid("The lead is closed. You cannot convert or qualify a lead that is closed.")  # GUESS wording
    status = p["Status"]
    if api.tables["lead"].attributes["statuscode"].status_states.get(status) != 1:  # type: ignore[union-attr]
        raise _invalid(f"{status} is not a valid status code for state code LeadState.Qualified on lead.")
    origin = {"originatingleadid": ("lead", lid)}
    created: list[tuple[str, str]] = []
    account = contact = None
    if p["CreateAccount"] and lead.get("companyname"):  # no company name, no account (GUESS)
        account = _create(api, ctx, "account", {"name": lead["companyname"]}, origin)
        created.append(("account", account))
    if p["CreateContact"]:
        values = {c: lead.get(c) for c in ("firstname", "lastname", "emailaddress1", "telephone1") if lead.get(c)}
        links = {**origin, **({"parentcustomerid": ("account", account)} if account else {})}
        contact = _create(api, ctx, "contact", values, links)
        created.append(("contact", contact))
    if p["CreateOpportunity"]:
        customer = _customer(api, p.get("OpportunityCustomerId"), account, contact)
        links = {**origin, **({"customerid": customer} if customer else {})}
        if account:
            links["parentaccountid"] = ("account", account)
        if contact:
            links["parentcontactid"] = ("contact", contact)
        values = {"name": lead.get("subject") or lead.get("fullname") or "Opportunity"}
        if lead.get("estimatedamount") is not None:
            values["estimatedvalue"] = lead["estimatedamount"]
        created.append(("opportunity", _create(api, ctx, "opportunity", values, links)))
    changes: dict[str, Any] = {"statecode": 1, "statuscode": status}
    api.do_update(ctx, api.tables["lead"], lid, lead, changes)
    for col, target, rid in (("parentaccountid", "account", account), ("parentcontactid", "contact", contact)):
        if rid:  # the lead keeps links to what it became (GUESS)
            api.store.update("lead", lid, {col: rid, f"{col}__type": target})
    value = [{"@odata.type": f"#{NS}{t}", api.tables[t].primary_id: rid} for t, rid in created]
    return api.json({"@odata.context": f"{ctx.api}/$metadata#Collection({NS}crmbaseentity)", "value": value})


def _customer(api: RecordApi, given: Any, account: str | None, contact: str | None) -> tuple[str, str] | None:
    if given is not None:
        t, rid = entity_ref(api, given, "OpportunityCustomerId")
        if t.logical_name not in ("account", "contact"):
            raise _invalid("OpportunityCustomerId must be an account or a contact.")
        return t.logical_name, rid
    if account:
        return "account", account
    return ("contact", contact) if contact else None


# -- WinOpportunity ---------------------------------------------------------------------------------------------------


async def win_opportunity(api: RecordApi, ctx: Ctx, bound: Bound | None, p: dict[str, Any], msg: Message) -> Response:
    """Creates the completed ``opportunityclose`` activity and closes the opportunity as won with ``Status``
    (webapi/use-web-api-actions.md, WinOpportunity example); actual value and close date come from the close."""
    close = p["OpportunityClose"]
    if not isinstance(close, dict):
        raise errors.bad_request("The parameter 'OpportunityClose' must be an entity object.", "0x0")
    close_t = api.tables["opportunityclose"]
    data = {k: v for k, v in close.items() if k != "@odata.type"}
    rid = _create(api, ctx, "opportunityclose", data, {})
    row = api.store.query("SELECT * FROM opportunityclose WHERE activityid = ?", [rid])[0]
    opp_id = row.get("opportunityid")
    if not opp_id:
        api.store.delete("opportunityclose", rid)
        raise _invalid("OpportunityClose must name its opportunity (opportunityid@odata.bind).")
    opp_t = api.tables["opportunity"]
    _oid, opp = api.load(opp_t, str(opp_id))
    if opp.get("statecode") != 0:
        raise _invalid("The opportunity is already closed.")  # GUESS wording
    status = p["Status"]
    if opp_t.attributes["statuscode"].status_states.get(status) != 1:  # type: ignore[union-attr]
        raise _invalid(f"{status} is not a valid status code for state code OpportunityState.Won on opportunity.")
    api.do_update(ctx, close_t, rid, row, {"statecode": 1, "statuscode": 2})
    actual = row.get("actualrevenue") if row.get("actualrevenue") is not None else opp.get("estimatedvalue")
    changes = {
        "statecode": 1,
        "statuscode": status,
        "actualclosedate": row.get("actualend") or fmt_dt_now(api.emu.clock),
    }
    if actual is not None:
        changes["actualvalue"] = actual
    api.do_update(ctx, opp_t, str(opp_id), opp, changes)
    return respond(api, ctx, msg, None)


# -- WhoAmI, RetrieveVersion, CalculateRollupField ----------------------------------------------------------------


async def who_am_i(api: RecordApi, ctx: Ctx, bound: Bound | None, p: dict[str, Any], msg: Message) -> Response:
    """The caller's ids (reference section 10), with the degree-of-parallelism hint Dataverse sends."""
    body = {
        "BusinessUnitId": ctx.user["businessunitid"],
        "UserId": ctx.user["systemuserid"],
        "OrganizationId": api.emu.organization_id,
    }
    resp = respond(api, ctx, msg, body)
    resp.headers["x-ms-dop-hint"] = "4"
    return resp


async def retrieve_version(api: RecordApi, ctx: Ctx, bound: Bound | None, p: dict[str, Any], msg: Message) -> Response:
    return respond(api, ctx, msg, {"Version": VERSION})


#: rollup columns: (table, column) -> (source table, lookup to the parent, aggregate, source column), GUESS for the
#: definitions (account's system rollups count and sum the open opportunities of the account; child accounts of the
#: hierarchy are not included here).
ROLLUPS = {
    ("account", "opendeals"): ("opportunity", "parentaccountid", "COUNT", "*"),
    ("account", "openrevenue"): ("opportunity", "parentaccountid", "SUM", "estimatedvalue"),
}


async def calculate_rollup(api: RecordApi, ctx: Ctx, bound: Bound | None, p: dict[str, Any], msg: Message) -> Response:
    """Recomputes one rollup column of the target row now, stores it with its ``_date`` and ``_state`` (1,
    Calculated) and answers the row's id with those three values (webapi/reference/calculaterollupfield.md)."""
    table, rid = entity_ref(api, p["Target"], "Target")
    field = str(p["FieldName"])
    spec = ROLLUPS.get((table.logical_name, field))
    if spec is None:
        raise _invalid(f"The field '{field}' is not a rollup field of {table.logical_name}.")  # GUESS wording
    source, lookup, agg, column = spec
    value = api.store.scalar(
        f"SELECT {agg}({column}) FROM {source} WHERE {lookup} = ? AND statecode = 0",
        [rid],
    )
    now = fmt_dt_now(api.emu.clock)
    api.store.update(table.logical_name, rid, {field: value or 0, f"{field}_date": now, f"{field}_state": 1})
    _rid, row = api.load(table, rid)
    body = {
        "@odata.context": f"{ctx.api}/$metadata#{table.entity_set}/$entity",
        table.primary_id: rid,
        field: row.get(field),
        f"{field}_date": row.get(f"{field}_date"),
        f"{field}_state": row.get(f"{field}_state"),
    }
    return api.json(body)


# -- the sample custom API --------------------------------------------------------------------------------------------

SAMPLE_API = "sample_ApplyDiscount"


async def apply_discount(api: RecordApi, ctx: Ctx, bound: Bound | None, p: dict[str, Any], msg: Message) -> Response:
    """``sample_ApplyDiscount``: Total = Amount less Percent percent (rounded to cents, half even), CodeCount = how
    many Codes, CustomerName = the Customer account's name. A percent outside 0..100 is the plug-in's refusal
    (InvalidPluginExecutionException: 0x80040265, as custom-api.md says a plug-in error reaches the caller)."""
    percent = p["Percent"]
    if not isinstance(percent, int) or not 0 <= percent <= 100:
        raise DataverseError(400, "0x80040265", "Percent must be between 0 and 100.")
    amount = Decimal(str(p["Amount"]))
    total = (amount * (100 - percent) / 100).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
    name = None
    if p.get("Customer") is not None:
        t, rid = entity_ref(api, p["Customer"], "Customer", "account")
        name = api.load(t, rid)[1].get("name")
    codes = p.get("Codes") or []
    return respond(api, ctx, msg, {"Total": float(total), "CodeCount": len(codes), "CustomerName": name})


#: the sample custom API's rows: (unique name, type, logical entity name, optional)
_SAMPLE_PARAMS = (
    ("Amount", 8, None, False),
    ("Percent", 7, None, False),
    ("Codes", 11, None, True),
    ("Customer", 5, "account", True),
)
_SAMPLE_PROPS = (("Total", 8, None), ("CodeCount", 7, None), ("CustomerName", 10, None))


def ensure_sample_api(store: Store, owner: str) -> None:
    """Register ``sample_ApplyDiscount`` (unbound action) in the customapi tables, with stable ids."""
    api_id = meta_id("customapi", SAMPLE_API)
    if store.exists("customapi", api_id):
        return
    common = {"statecode": 0, "statuscode": 1, "ownerid": owner, "ownerid__type": "systemuser"}
    store.insert(
        "customapi",
        {
            "customapiid": api_id,
            "uniquename": SAMPLE_API,
            "name": SAMPLE_API,
            "displayname": "Apply discount (sample)",
            "description": "Sample custom API: an amount less a percentage.",
            "bindingtype": 0,
            "isfunction": False,
            "isprivate": False,
            "allowedcustomprocessingsteptype": 0,
            "versionnumber": store.next_version(),
            **common,
        },
    )
    link = {"customapiid": api_id, "customapiid__type": "customapi"}
    for name, typ, entity, optional in _SAMPLE_PARAMS:
        store.insert(
            "customapirequestparameter",
            {
                "customapirequestparameterid": meta_id("customapirequestparameter", SAMPLE_API, name),
                "uniquename": name,
                "name": f"{SAMPLE_API}.{name}",
                "displayname": name,
                "type": typ,
                "logicalentityname": entity,
                "isoptional": optional,
                "versionnumber": store.next_version(),
                **common,
                **link,
            },
        )
    for name, typ, entity in _SAMPLE_PROPS:
        store.insert(
            "customapiresponseproperty",
            {
                "customapiresponsepropertyid": meta_id("customapiresponseproperty", SAMPLE_API, name),
                "uniquename": name,
                "name": f"{SAMPLE_API}.{name}",
                "displayname": name,
                "type": typ,
                "logicalentityname": entity,
                "versionnumber": store.next_version(),
                **common,
                **link,
            },
        )


register(
    Message(
        "QualifyLead",
        ACTION,
        (
            Param("CreateAccount", "Edm.Boolean", False),
            Param("CreateContact", "Edm.Boolean", False),
            Param("CreateOpportunity", "Edm.Boolean", False),
            Param("OpportunityCurrencyId", "mscrm.transactioncurrency"),
            Param("OpportunityCustomerId", "mscrm.crmbaseentity"),
            Param("SourceCampaignId", "mscrm.crmbaseentity"),
            Param("Status", "Edm.Int32", False),
            Param("SuppressDuplicateDetection", "Edm.Boolean"),
        ),
        "Collection(mscrm.crmbaseentity)",
        "mscrm.lead",
        qualify_lead,
    )
)
register(
    Message(
        "WinOpportunity",
        ACTION,
        (Param("OpportunityClose", "mscrm.opportunityclose", False), Param("Status", "Edm.Int32", False)),
        handler=win_opportunity,
    )
)
register(
    Message(
        "WhoAmI",
        FUNCTION,
        returns="mscrm.WhoAmIResponse",
        handler=who_am_i,
        complex_types={
            "WhoAmIResponse": (
                Param("BusinessUnitId", "Edm.Guid"),
                Param("UserId", "Edm.Guid"),
                Param("OrganizationId", "Edm.Guid"),
            )
        },
    )
)
register(
    Message(
        "RetrieveVersion",
        FUNCTION,
        returns="mscrm.RetrieveVersionResponse",
        handler=retrieve_version,
        complex_types={"RetrieveVersionResponse": (Param("Version", "Edm.String"),)},
    )
)
register(
    Message(
        "CalculateRollupField",
        FUNCTION,
        (Param("Target", "mscrm.crmbaseentity", False), Param("FieldName", "Edm.String", False)),
        "mscrm.crmbaseentity",
        handler=calculate_rollup,
    )
)
CUSTOM_HANDLERS[SAMPLE_API] = apply_discount
