"""Activity tables (``task``, ``phonecall``, ``email``), ``activityparty`` and ``transactioncurrency``.

Why a spec module of its own, with no imports: ``model`` merges these specs into the preloaded tables (as it does the
webhook registration and system job tables), so nothing here may import the model back. Names, types, choices and
relationship names follow Microsoft's entity reference (powerapps-docs ``reference/entities/task.md``,
``email.md``, ``activityparty.md``, ``transactioncurrency.md``); the Dynamics 365 regarding targets (lead,
opportunity, incident) and the ``phonecall`` choices, whose pages are not in the Dataverse-only reference, are marked
GUESS in BEHAVIOURS.md.
"""

from __future__ import annotations

#: the tables an activity can be "regarding" (account and contact documented; the others are Dynamics 365 tables)
REGARDING = ("account", "contact", "lead", "opportunity", "incident")
#: who can take part in an activity (``activityparty.partyid`` targets present in this organization)
PARTIES = ("account", "contact", "lead", "systemuser")
ACTIVITIES = {"task": ("Task", 4212), "phonecall": ("PhoneCall", 4210), "email": ("Email", 4202)}
PRIORITY = {0: "Low", 1: "Normal", 2: "High"}
PARTICIPATION = {
    1: "Sender",
    2: "To Recipient",
    3: "CC Recipient",
    4: "BCC Recipient",
    5: "Required attendee",
    6: "Optional attendee",
    7: "Organizer",
    8: "Regarding",
    9: "Owner",
    10: "Resource",
    11: "Customer",
}
OPEN_COMPLETED_CANCELED = {0: "Open", 1: "Completed", 2: "Canceled"}


def _activity_cols(table: str) -> list[tuple[str, str, dict[str, object]]]:
    """Columns every activity carries (ActivityPointer's), with the documented display names."""
    return [
        ("subject", "String", {"max_length": 200, "required": "ApplicationRequired", "display": "Subject"}),
        ("description", "Memo", {"max_length": 2000, "display": "Description"}),
        ("scheduledstart", "DateTime", {"display": "Start Date"}),
        ("scheduledend", "DateTime", {"display": "Due Date"}),
        ("actualstart", "DateTime", {"display": "Actual Start"}),
        ("actualend", "DateTime", {"display": "Actual End"}),
        ("actualdurationminutes", "Integer", {"display": "Duration"}),
        ("prioritycode", "Picklist", {"options": PRIORITY, "display": "Priority"}),
        (
            "activitytypecode",
            "EntityName",
            {"valid_for_create": False, "valid_for_update": False, "display": "Activity Type"},
        ),
        ("regardingobjectid", "Lookup", {"targets": REGARDING, "nav_suffix": f"_{table}", "display": "Regarding"}),
    ]


def _activity(table: str, cols: list[tuple[str, str, dict[str, object]]], state: object) -> dict[str, object]:
    schema, otc = ACTIVITIES[table]
    display = {
        "task": ("Task", "Tasks"),
        "phonecall": ("Phone Call", "Phone Calls"),
        "email": ("Email", "Email Messages"),
    }
    return {
        "schema": schema,
        "set": f"{table}s",
        "otc": otc,
        "name": "subject",
        "pk": "activityid",
        "display": display[table],
        "activity": True,
        "cols": _activity_cols(table) + cols,
        "state": state,
    }


ACTIVITY_TABLES: dict[str, dict[str, object]] = {
    "task": _activity(
        "task",
        [
            ("percentcomplete", "Integer", {"display": "Percent Complete"}),
            ("category", "String", {"max_length": 250, "display": "Category"}),
            ("subcategory", "String", {"max_length": 250, "display": "Sub-Category"}),
        ],
        (
            OPEN_COMPLETED_CANCELED,
            {
                2: "Not Started",
                3: "In Progress",
                4: "Waiting on someone else",
                7: "Deferred",
                5: "Completed",
                6: "Canceled",
            },
        ),
    ),
    "phonecall": _activity(
        "phonecall",
        [
            ("phonenumber", "String", {"max_length": 200, "display": "Phone Number"}),
            ("directioncode", "Boolean", {"display": "Direction"}),
        ],
        (OPEN_COMPLETED_CANCELED, {1: "Open", 2: "Made", 4: "Received", 3: "Canceled"}),
    ),
    "email": _activity(
        "email",
        [
            ("sender", "String", {"max_length": 250, "display": "From"}),
            ("torecipients", "String", {"max_length": 500, "display": "To Recipients"}),
            ("directioncode", "Boolean", {"display": "Direction"}),
        ],
        (
            OPEN_COMPLETED_CANCELED,
            {
                1: "Draft",
                8: "Failed",
                2: "Completed",
                3: "Sent",
                4: "Received",
                6: "Pending Send",
                7: "Sending",
                5: "Canceled",
            },
        ),
    ),
    "activityparty": {
        "schema": "ActivityParty",
        "set": "activityparties",
        "otc": 135,
        "name": None,
        "ownership": "None",
        "display": ("Activity Party", "Activity Parties"),
        "cols": [
            ("activityid", "Lookup", {"targets": tuple(ACTIVITIES), "display": "Activity"}),
            ("partyid", "Lookup", {"targets": PARTIES, "display": "Party"}),
            (
                "participationtypemask",
                "Picklist",
                {"options": PARTICIPATION, "required": "SystemRequired", "display": "Participation Type"},
            ),
            ("addressused", "String", {"max_length": 200, "display": "Address"}),
            ("effort", "Double", {"display": "Effort"}),
        ],
    },
    "transactioncurrency": {
        "schema": "TransactionCurrency",
        "set": "transactioncurrencies",
        "otc": 9105,
        "name": "currencyname",
        "ownership": "OrganizationOwned",
        "display": ("Currency", "Currencies"),
        "cols": [
            ("currencyname", "String", {"max_length": 100, "required": "SystemRequired", "display": "Currency Name"}),
            ("isocurrencycode", "String", {"max_length": 5, "required": "SystemRequired", "display": "Currency Code"}),
            (
                "currencysymbol",
                "String",
                {"max_length": 10, "required": "SystemRequired", "display": "Currency Symbol"},
            ),
            ("exchangerate", "Decimal", {"required": "SystemRequired", "display": "Exchange Rate"}),
            ("currencyprecision", "Integer", {"required": "SystemRequired", "display": "Currency Precision"}),
        ],
        "state": ({0: "Active", 1: "Inactive"}, {1: "Active", 2: "Inactive"}),
    },
}

#: statuscode -> statecode; the first status listed for a state is its documented DefaultStatus
ACTIVITY_STATUS_STATE = {
    "task": {2: 0, 3: 0, 4: 0, 7: 0, 5: 1, 6: 2},
    "phonecall": {1: 0, 2: 1, 4: 1, 3: 2},
    "email": {1: 0, 8: 0, 2: 1, 3: 1, 4: 1, 6: 1, 7: 1, 5: 2},
    "transactioncurrency": {1: 0, 2: 1},
}

_PLURAL = {"task": "Tasks", "phonecall": "Phonecalls", "email": "Emails"}
_REGARDING_SCHEMA = {
    "account": "Account",
    "contact": "Contact",
    "lead": "Lead",
    "opportunity": "Opportunity",
    "incident": "Incident",
}
_CURRENCY_SCHEMA = {"task": "Task", "phonecall": "PhoneCall", "email": "Email"}

#: (referencing table, lookup, target) -> (relationship schema name, collection-valued navigation property)
ACTIVITY_RELATIONSHIPS: dict[tuple[str, str, str], tuple[str, str]] = {}
for _act in ACTIVITIES:
    for _target in REGARDING:
        _name = f"{_REGARDING_SCHEMA[_target]}_{_PLURAL[_act]}"
        ACTIVITY_RELATIONSHIPS[(_act, "regardingobjectid", _target)] = (_name, _name)
    ACTIVITY_RELATIONSHIPS[("activityparty", "activityid", _act)] = (f"{_act}_activity_parties",) * 2
    _cur = f"TransactionCurrency_{_CURRENCY_SCHEMA[_act]}"
    ACTIVITY_RELATIONSHIPS[(_act, "transactioncurrencyid", "transactioncurrency")] = (_cur, _cur)
    for _col in ("createdby", "modifiedby", "createdonbehalfby", "modifiedonbehalfby"):
        ACTIVITY_RELATIONSHIPS[(_act, _col, "systemuser")] = (f"lk_{_act}_{_col}",) * 2
    ACTIVITY_RELATIONSHIPS[(_act, "owninguser", "systemuser")] = (f"user_{_act}",) * 2
    ACTIVITY_RELATIONSHIPS[(_act, "owningteam", "team")] = (f"team_{_act}",) * 2
    ACTIVITY_RELATIONSHIPS[(_act, "owningbusinessunit", "businessunit")] = (f"business_unit_{_act}_activities",) * 2
for _target in PARTIES:
    _name = "system_user_activity_parties" if _target == "systemuser" else f"{_target}_activity_parties"
    ACTIVITY_RELATIONSHIPS[("activityparty", "partyid", _target)] = (_name, _name)
for _table, _schema in (
    ("account", "Account"),
    ("contact", "Contact"),
    ("lead", "Lead"),
    ("opportunity", "Opportunity"),
):
    _cur = f"TransactionCurrency_{_schema}"
    ACTIVITY_RELATIONSHIPS[(_table, "transactioncurrencyid", "transactioncurrency")] = (_cur, _cur)
