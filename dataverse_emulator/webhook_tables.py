"""The webhook registration tables (``serviceendpoint``, ``plugintype``, ``sdkmessage``, ``sdkmessagefilter``,
``sdkmessageprocessingstep`` and its images): specs only, merged into the model, so the model never imports the
delivery code."""

from __future__ import annotations

# Compact table specs in the shape of ``model._SPECS`` (merged there): organization-owned, no state columns.
_S, _PL, _B, _I, _LK = "String", "Picklist", "Boolean", "Integer", "Lookup"
REGISTRATION_TABLES: dict[str, dict[str, object]] = {
    "plugintype": {
        "schema": "PluginType",
        "set": "plugintypes",
        "otc": 4602,
        "name": "name",
        "ownership": "OrganizationOwned",
        "display": ("Plug-in Type", "Plug-in Types"),
        "cols": [("name", _S, {"max_length": 256}), ("typename", _S, {"max_length": 256})],
    },
    "sdkmessage": {
        "schema": "SdkMessage",
        "set": "sdkmessages",
        "otc": 4606,
        "name": "name",
        "ownership": "OrganizationOwned",
        "display": ("Sdk Message", "Sdk Messages"),
        "cols": [("name", _S, {"max_length": 256})],
    },
    "sdkmessagefilter": {
        "schema": "SdkMessageFilter",
        "set": "sdkmessagefilters",
        "otc": 4607,
        "name": "name",
        "ownership": "OrganizationOwned",
        "display": ("Sdk Message Filter", "Sdk Message Filters"),
        "cols": [
            ("name", _S, {"max_length": 256}),
            ("primaryobjecttypecode", "EntityName", {}),
            ("secondaryobjecttypecode", "EntityName", {}),
            ("sdkmessageid", _LK, {"targets": ("sdkmessage",)}),
        ],
    },
    "serviceendpoint": {
        "schema": "ServiceEndpoint",
        "set": "serviceendpoints",
        "otc": 4618,
        "name": "name",
        "ownership": "OrganizationOwned",
        "display": ("Service Endpoint", "Service Endpoints"),
        "cols": [
            ("name", _S, {"max_length": 256, "required": "SystemRequired"}),
            ("description", "Memo", {"max_length": 2000}),
            ("url", _S, {"max_length": 2000}),
            (
                "contract",
                _PL,
                {
                    "options": {
                        1: "OneWay",
                        2: "Queue",
                        3: "Rest",
                        4: "TwoWay",
                        5: "Topic",
                        6: "Queue (Persistent)",
                        7: "Event Hub",
                        8: "Webhook",
                        9: "Event Grid",
                        10: "Managed Data Lake",
                    }
                },
            ),
            (
                "authtype",
                _PL,
                {
                    "options": {
                        1: "ACS",
                        2: "SAS Key",
                        3: "SAS Token",
                        4: "Webhook Key",
                        5: "Http Header",
                        6: "Http Query String",
                        7: "Connection String",
                        8: "Access Key",
                    }
                },
            ),
            ("authvalue", _S, {"max_length": 2048, "valid_for_read": False}),
            ("messageformat", _PL, {"options": {1: "Binary XML", 2: "Json", 3: "Text XML"}}),
            ("userclaim", _PL, {"options": {1: "None", 2: "UserId", 3: "UserInfo"}}),
            ("connectionmode", _PL, {"options": {1: "Normal", 2: "Federated"}}),
        ],
    },
    "sdkmessageprocessingstep": {
        "schema": "SdkMessageProcessingStep",
        "set": "sdkmessageprocessingsteps",
        "otc": 4608,
        "name": "name",
        "ownership": "OrganizationOwned",
        "display": ("Sdk Message Processing Step", "Sdk Message Processing Steps"),
        "cols": [
            ("name", _S, {"max_length": 256}),
            ("description", _S, {"max_length": 256}),
            ("mode", _PL, {"options": {0: "Synchronous", 1: "Asynchronous"}}),
            ("stage", _PL, {"options": {10: "Pre-validation", 20: "Pre-operation", 40: "Post-operation"}}),
            ("rank", _I, {}),
            (
                "supporteddeployment",
                _PL,
                {"options": {0: "Server Only", 1: "Microsoft Dynamics 365 Client for Outlook Only", 2: "Both"}},
            ),
            ("asyncautodelete", _B, {}),
            ("filteringattributes", _S, {"max_length": 100000}),
            ("configuration", _S, {"max_length": 1073741823}),
            ("eventhandler", _LK, {"targets": ("serviceendpoint", "plugintype")}),
            ("sdkmessageid", _LK, {"targets": ("sdkmessage",)}),
            ("sdkmessagefilterid", _LK, {"targets": ("sdkmessagefilter",)}),
        ],
    },
    "sdkmessageprocessingstepimage": {
        "schema": "SdkMessageProcessingStepImage",
        "set": "sdkmessageprocessingstepimages",
        "otc": 4615,
        "name": "name",
        "ownership": "OrganizationOwned",
        "display": ("Sdk Message Processing Step Image", "Sdk Message Processing Step Images"),
        "cols": [
            ("name", _S, {"max_length": 256}),
            ("entityalias", _S, {"max_length": 256}),
            ("imagetype", _PL, {"options": {0: "PreImage", 1: "PostImage", 2: "Both"}}),
            ("messagepropertyname", _S, {"max_length": 256}),
            ("attributes", _S, {"max_length": 100000}),
            ("sdkmessageprocessingstepid", _LK, {"targets": ("sdkmessageprocessingstep",)}),
        ],
    },
}
#: Documented relationship names (``serviceendpoint_sdkmessageprocessingstep`` is used in register-web-hook.md).
REGISTRATION_RELATIONSHIPS = {
    ("sdkmessageprocessingstep", "eventhandler", "serviceendpoint"): ("serviceendpoint_sdkmessageprocessingstep",) * 2,
    ("sdkmessageprocessingstep", "eventhandler", "plugintype"): ("plugintype_sdkmessageprocessingstep",) * 2,
    ("sdkmessageprocessingstepimage", "sdkmessageprocessingstepid", "sdkmessageprocessingstep"): (
        "sdkmessageprocessingstepid_sdkmessageprocessingstepimage",
    )
    * 2,
}
