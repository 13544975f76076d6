"""The tables the message handlers need: ``opportunityclose`` (WinOpportunity's activity) and the custom API
registration tables ``customapi``, ``customapirequestparameter``, ``customapiresponseproperty`` (custom-api-tables.md).

Specs only, in the shape of ``model._SPECS`` (merged there), so the model never imports the handlers.
"""

from __future__ import annotations

_S, _M, _I, _B, _LK, _PL, _MNY, _DT = "String", "Memo", "Integer", "Boolean", "Lookup", "Picklist", "Money", "DateTime"
_ACTIVE = ({0: "Active", 1: "Inactive"}, {1: "Active", 2: "Inactive"})
#: customapirequestparameter.type / customapiresponseproperty.type choices (custom-api-tables.md)
_PARAM_TYPES = {
    0: "Boolean",
    1: "DateTime",
    2: "Decimal",
    3: "Entity",
    4: "EntityCollection",
    5: "EntityReference",
    6: "Float",
    7: "Integer",
    8: "Money",
    9: "Picklist",
    10: "String",
    11: "StringArray",
    12: "Guid",
}


def _custom_cols(extra: list[tuple[str, str, dict[str, object]]]) -> list[tuple[str, str, dict[str, object]]]:
    return [
        ("uniquename", _S, {"max_length": 128, "required": "SystemRequired"}),
        ("name", _S, {"max_length": 100}),
        ("displayname", _S, {"max_length": 100}),
        ("description", _S, {"max_length": 300}),
        *extra,
    ]


MESSAGE_TABLES: dict[str, dict[str, object]] = {
    "opportunityclose": {
        "schema": "OpportunityClose",
        "set": "opportunitycloses",
        "otc": 4208,
        "name": "subject",
        "pk": "activityid",
        "activity": True,
        "display": ("Opportunity Close", "Opportunity Close Activities"),
        "cols": [
            ("subject", _S, {"max_length": 200}),
            ("description", _M, {"max_length": 2000}),
            ("actualend", _DT, {}),
            ("actualrevenue", _MNY, {}),
            ("opportunityid", _LK, {"targets": ("opportunity",)}),
        ],
        "state": ({0: "Open", 1: "Completed", 2: "Canceled"}, {1: "Open", 2: "Completed", 3: "Canceled"}),
    },
    "customapi": {
        "schema": "CustomAPI",
        "set": "customapis",
        "otc": 10030,
        "name": "name",
        "display": ("Custom API", "Custom APIs"),
        "cols": _custom_cols(
            [
                ("bindingtype", _PL, {"options": {0: "Global", 1: "Entity", 2: "EntityCollection"}}),
                ("boundentitylogicalname", _S, {"max_length": 100}),
                ("isfunction", _B, {}),
                ("isprivate", _B, {}),
                (
                    "allowedcustomprocessingsteptype",
                    _PL,
                    {"options": {0: "None", 1: "Async Only", 2: "Sync and Async"}},
                ),
                ("executeprivilegename", _S, {"max_length": 100}),
            ]
        ),
        "state": _ACTIVE,
    },
    "customapirequestparameter": {
        "schema": "CustomAPIRequestParameter",
        "set": "customapirequestparameters",
        "otc": 10031,
        "name": "name",
        "display": ("Custom API Request Parameter", "Custom API Request Parameters"),
        "cols": _custom_cols(
            [
                ("type", _PL, {"options": _PARAM_TYPES}),
                ("logicalentityname", _S, {"max_length": 100}),
                ("isoptional", _B, {}),
                ("customapiid", _LK, {"targets": ("customapi",)}),
            ]
        ),
        "state": _ACTIVE,
    },
    "customapiresponseproperty": {
        "schema": "CustomAPIResponseProperty",
        "set": "customapiresponseproperties",
        "otc": 10032,
        "name": "name",
        "display": ("Custom API Response Property", "Custom API Response Properties"),
        "cols": _custom_cols(
            [
                ("type", _PL, {"options": _PARAM_TYPES}),
                ("logicalentityname", _S, {"max_length": 100}),
                ("customapiid", _LK, {"targets": ("customapi",)}),
            ]
        ),
        "state": _ACTIVE,
    },
}
MESSAGE_STATUS_STATE = {
    "opportunityclose": {1: 0, 2: 1, 3: 2},
    "customapi": {1: 0, 2: 1},
    "customapirequestparameter": {1: 0, 2: 1},
    "customapiresponseproperty": {1: 0, 2: 1},
}
MESSAGE_RELATIONSHIPS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("opportunityclose", "opportunityid", "opportunity"): ("Opportunity_OpportunityClose",) * 2,
    ("customapirequestparameter", "customapiid", "customapi"): ("customapi_customapirequestparameter",) * 2,
    ("customapiresponseproperty", "customapiid", "customapi"): ("customapi_customapiresponseproperty",) * 2,
}
