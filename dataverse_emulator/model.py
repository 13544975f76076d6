"""Preloaded table metadata: the standard tables the emulator knows, kept compact.

Why a Python data module: the metadata drives SQLite DDL, payload validation, `_x_value` read-back, navigation
property names for ``@odata.bind``, and the ``EntityDefinitions`` answers, so one source must feed all of them.
Names (navigation properties, relationship schema names) follow Dataverse's system tables as documented; where the
real name was not checked the value is marked ``guess`` in BEHAVIOURS.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, cast

NS = uuid.UUID("5b0f1a2e-7d3c-4c55-9a8e-d365e0000001")


def meta_id(*parts: str) -> str:
    """A stable MetadataId derived from names, so ids survive restarts and match across processes."""
    return str(uuid.uuid5(NS, "/".join(parts)))


@dataclass
class Attribute:
    """One column. ``type`` is the AttributeTypeCode name (String, Integer, Lookup, ...)."""

    name: str
    type: str
    max_length: int | None = None
    targets: tuple[str, ...] = ()
    options: dict[int, str] | None = None
    required: str = "None"
    valid_for_create: bool = True
    valid_for_update: bool = True
    date_only: bool = False
    valid_for_read: bool = True  # False for write-only columns such as serviceendpoint.authvalue
    is_primary_id: bool = False
    is_primary_name: bool = False
    entity: str = ""
    status_states: dict[int, int] | None = None  # statuscode value -> the statecode it belongs to
    custom: bool = False  # created through the metadata API (IsCustomAttribute)
    extra: dict[str, Any] = field(default_factory=dict)  # AttributeMetadata properties set by a create/update
    display: str = ""  # documented DisplayName (labels.py); empty falls back to the schema name
    nav_suffix: str = ""  # activities' regardingobjectid: regardingobjectid_account_task, not ..._account

    @property
    def is_lookup(self) -> bool:
        return self.type in ("Lookup", "Customer", "Owner")

    @property
    def odata_type(self) -> str:
        special = {
            "Customer": "Lookup",
            "Owner": "Lookup",
            "State": "State",
            "Status": "Status",
            "Uniqueidentifier": "UniqueIdentifier",
        }
        return f"Microsoft.Dynamics.CRM.{special.get(self.type, self.type)}AttributeMetadata"

    @property
    def metadata_id(self) -> str:
        return meta_id(self.entity, self.name)


@dataclass
class Relationship:
    """A 1:N relationship as seen from both sides (ManyToOne on the referencing table)."""

    schema_name: str
    referenced_entity: str
    referenced_attribute: str
    referencing_entity: str
    referencing_attribute: str
    referencing_nav: str  # single-valued navigation property on the referencing table
    referenced_nav: str  # collection-valued navigation property on the referenced table
    cascade: dict[str, str] | None = None  # CascadeConfiguration set at create; None: cascade.py's seeded one

    @property
    def metadata_id(self) -> str:
        return meta_id("rel", self.schema_name)


@dataclass
class Key:
    """An alternate key. Status moves Pending -> Active (or Failed) on the injected clock."""

    schema_name: str
    entity: str
    attributes: list[str]
    created_at: float
    metadata_id: str
    failed: bool = False
    display_name: str | None = None


@dataclass
class Table:
    """One table's metadata."""

    logical_name: str
    schema_name: str
    entity_set: str
    primary_id: str
    primary_name: str | None
    object_type_code: int
    ownership: str = "UserOwned"
    attributes: dict[str, Attribute] = field(default_factory=dict)
    display_name: str = ""
    display_collection_name: str = ""
    custom: bool = False  # created through the metadata API (IsCustomEntity)
    extra: dict[str, Any] = field(default_factory=dict)  # EntityMetadata properties set by a create

    @property
    def metadata_id(self) -> str:
        return meta_id(self.logical_name)


# --- option sets -------------------------------------------------------------------------------------------------

ACTIVE_INACTIVE_STATE = {0: "Active", 1: "Inactive"}
ACTIVE_INACTIVE_STATUS = {1: "Active", 2: "Inactive"}
INDUSTRY = dict(
    enumerate(
        [
            "Accounting",
            "Agriculture and Non-petrol Natural Resource Extraction",
            "Broadcasting Printing and Publishing",
            "Brokers",
            "Building Supply Retail",
            "Business Services",
            "Consulting",
            "Consumer Services",
            "Design, Direction and Creative Management",
            "Distributors, Dispatchers and Processors",
            "Doctor's Offices and Clinics",
            "Durable Manufacturing",
            "Eating and Drinking Places",
            "Entertainment Retail",
            "Equipment Rental and Leasing",
            "Financial",
            "Food and Tobacco Processing",
            "Inbound Capital Intensive Processing",
            "Inbound Repair and Services",
            "Insurance",
            "Legal Services",
            "Non-Durable Merchandise Retail",
            "Outbound Consumer Service",
            "Petrochemical Extraction and Distribution",
            "Service Retail",
            "SIG Affiliations",
            "Social Services",
            "Special Outbound Trade Contractors",
            "Specialty Realty",
            "Transportation",
            "Utility Creation and Distribution",
            "Vehicle Retail",
            "Wholesale",
        ],
        start=1,
    )
)
CUSTOMER_TYPE = dict(
    enumerate(
        [
            "Competitor",
            "Consultant",
            "Customer",
            "Investor",
            "Partner",
            "Influencer",
            "Press",
            "Prospect",
            "Reseller",
            "Supplier",
            "Vendor",
            "Other",
        ],
        start=1,
    )
)
LEAD_SOURCE = dict(
    enumerate(
        [
            "Advertisement",
            "Employee Referral",
            "External Referral",
            "Partner",
            "Public Relations",
            "Seminar",
            "Trade Show",
            "Web",
            "Word of Mouth",
            "Other",
        ],
        start=1,
    )
)

# --- table definitions (compact: (name, type, extra)) -------------------------------------------------------------

S = "String"
M = "Memo"
I = "Integer"  # noqa: E741
MNY = "Money"
B = "Boolean"
DT = "DateTime"
PL = "Picklist"
DEC = "Decimal"
DBL = "Double"
UID = "Uniqueidentifier"


def _rollup(name: str, typ: str) -> list[tuple[str, str, dict[str, object]]]:
    """A system rollup column (SourceType 2) with its ``_date`` and ``_state`` companions, all read-only: the
    values change by the rollup job or ``CalculateRollupField`` (define-rollup-fields, GUESS for the flags)."""
    ro: dict[str, object] = {"valid_for_create": False, "valid_for_update": False}
    return [
        (name, typ, {**ro, "extra": {"SourceType": 2}}),
        (f"{name}_date", DT, {**ro, "extra": {"AttributeOf": name}}),
        (f"{name}_state", I, {**ro, "extra": {"AttributeOf": name}}),
    ]


_OWNED_TABLES = ("account", "contact", "lead", "opportunity", "incident", "list")


def _merge_columns(table: str) -> list[tuple[str, str, dict[str, object]]]:
    """``masterid`` and ``merged``, which Merge sets on the subordinate: read-only, as the account, contact and lead
    entity references list them ("Shows the master account that the account was merged with")."""
    ro: dict[str, object] = {"valid_for_create": False, "valid_for_update": False}
    return [("masterid", "Lookup", {**ro, "targets": (table,)}), ("merged", B, dict(ro))]


_SPECS: dict[str, dict[str, object]] = {
    "account": {
        "schema": "Account",
        "set": "accounts",
        "otc": 1,
        "name": "name",
        "display": ("Account", "Accounts"),
        "cols": [
            ("name", S, {"max_length": 160, "required": "ApplicationRequired"}),
            ("accountnumber", S, {"max_length": 20}),
            ("telephone1", S, {"max_length": 50}),
            ("fax", S, {"max_length": 50}),
            ("emailaddress1", S, {"max_length": 100}),
            ("websiteurl", S, {"max_length": 200}),
            ("address1_line1", S, {"max_length": 250}),
            ("address1_city", S, {"max_length": 80}),
            ("address1_stateorprovince", S, {"max_length": 50}),
            ("address1_postalcode", S, {"max_length": 20}),
            ("address1_country", S, {"max_length": 80}),
            ("description", M, {"max_length": 2000}),
            ("revenue", MNY, {}),
            ("creditlimit", MNY, {}),
            ("numberofemployees", I, {}),
            ("creditonhold", B, {}),
            ("industrycode", PL, {"options": INDUSTRY}),
            ("accountcategorycode", PL, {"options": {1: "Preferred Customer", 2: "Standard"}}),
            ("customertypecode", PL, {"options": CUSTOMER_TYPE}),
            ("primarycontactid", "Lookup", {"targets": ("contact",)}),
            ("parentaccountid", "Lookup", {"targets": ("account",)}),
            ("originatingleadid", "Lookup", {"targets": ("lead",)}),
            *_merge_columns("account"),
            *_rollup("opendeals", I),
            *_rollup("openrevenue", MNY),
        ],
        "state": (ACTIVE_INACTIVE_STATE, ACTIVE_INACTIVE_STATUS),
    },
    "contact": {
        "schema": "Contact",
        "set": "contacts",
        "otc": 2,
        "name": "fullname",
        "display": ("Contact", "Contacts"),
        "cols": [
            ("fullname", S, {"max_length": 160, "valid_for_create": False, "valid_for_update": False}),
            ("firstname", S, {"max_length": 50}),
            ("lastname", S, {"max_length": 50, "required": "ApplicationRequired"}),
            ("middlename", S, {"max_length": 50}),
            ("emailaddress1", S, {"max_length": 100}),
            ("telephone1", S, {"max_length": 50}),
            ("mobilephone", S, {"max_length": 50}),
            ("jobtitle", S, {"max_length": 100}),
            ("address1_city", S, {"max_length": 80}),
            ("description", M, {"max_length": 2000}),
            ("birthdate", DT, {"date_only": True}),
            ("annualincome", MNY, {}),
            ("creditonhold", B, {}),
            ("numberofchildren", I, {}),
            ("gendercode", PL, {"options": {1: "Male", 2: "Female"}}),
            ("parentcustomerid", "Customer", {"targets": ("account", "contact")}),
            ("originatingleadid", "Lookup", {"targets": ("lead",)}),
            *_merge_columns("contact"),
        ],
        "state": (ACTIVE_INACTIVE_STATE, ACTIVE_INACTIVE_STATUS),
    },
    "lead": {
        "schema": "Lead",
        "set": "leads",
        "otc": 4,
        "name": "fullname",
        "display": ("Lead", "Leads"),
        "cols": [
            ("fullname", S, {"max_length": 160, "valid_for_create": False, "valid_for_update": False}),
            ("subject", S, {"max_length": 300}),
            ("firstname", S, {"max_length": 50}),
            ("lastname", S, {"max_length": 50, "required": "ApplicationRequired"}),
            ("companyname", S, {"max_length": 100}),
            ("emailaddress1", S, {"max_length": 100}),
            ("telephone1", S, {"max_length": 50}),
            ("description", M, {"max_length": 2000}),
            ("estimatedamount", MNY, {}),
            ("leadsourcecode", PL, {"options": LEAD_SOURCE}),
            ("parentaccountid", "Lookup", {"targets": ("account",)}),
            ("parentcontactid", "Lookup", {"targets": ("contact",)}),
            ("customerid", "Customer", {"targets": ("account", "contact")}),
            *_merge_columns("lead"),
        ],
        "state": (
            {0: "Open", 1: "Qualified", 2: "Disqualified"},
            {
                1: "New",
                2: "Contacted",
                3: "Qualified",
                4: "Lost",
                5: "Cannot Contact",
                6: "No Longer Interested",
                7: "Canceled",
            },
        ),
    },
    "opportunity": {
        "schema": "Opportunity",
        "set": "opportunities",
        "otc": 3,
        "name": "name",
        "display": ("Opportunity", "Opportunities"),
        "cols": [
            ("name", S, {"max_length": 300, "required": "ApplicationRequired"}),
            ("description", M, {"max_length": 2000}),
            ("estimatedvalue", MNY, {}),
            ("estimatedclosedate", DT, {"date_only": True}),
            ("closeprobability", I, {}),
            ("opportunityratingcode", PL, {"options": {1: "Hot", 2: "Warm", 3: "Cold"}}),
            ("customerid", "Customer", {"targets": ("account", "contact")}),
            ("parentaccountid", "Lookup", {"targets": ("account",)}),
            ("parentcontactid", "Lookup", {"targets": ("contact",)}),
            ("originatingleadid", "Lookup", {"targets": ("lead",)}),
            ("actualvalue", MNY, {}),
            ("actualclosedate", DT, {"date_only": True}),
        ],
        "state": (
            {0: "Open", 1: "Won", 2: "Lost"},
            {1: "In Progress", 2: "On Hold", 3: "Won", 4: "Canceled", 5: "Out-Sold"},
        ),
    },
    "incident": {
        "schema": "Incident",
        "set": "incidents",
        "otc": 112,
        "name": "title",
        "display": ("Case", "Cases"),
        "cols": [
            ("title", S, {"max_length": 200, "required": "ApplicationRequired"}),
            ("ticketnumber", S, {"max_length": 100}),
            ("description", M, {"max_length": 2000}),
            ("prioritycode", PL, {"options": {1: "High", 2: "Normal", 3: "Low"}}),
            ("caseorigincode", PL, {"options": {1: "Phone", 2: "Email", 3: "Web", 2483: "Facebook", 3986: "Twitter"}}),
            ("customerid", "Customer", {"targets": ("account", "contact"), "required": "SystemRequired"}),
            ("primarycontactid", "Lookup", {"targets": ("contact",)}),
        ],
        "state": (
            {0: "Active", 1: "Resolved", 2: "Cancelled"},
            {
                1: "In Progress",
                2: "On Hold",
                3: "Waiting for Details",
                4: "Researching",
                5: "Problem Solved",
                1000: "Information Provided",
                6: "Cancelled",
                2000: "Merged",
            },
        ),
    },
    "systemuser": {
        "schema": "SystemUser",
        "set": "systemusers",
        "otc": 8,
        "name": "fullname",
        "ownership": "BusinessOwned",
        "display": ("User", "Users"),
        "cols": [
            ("fullname", S, {"max_length": 200, "valid_for_create": False, "valid_for_update": False}),
            ("firstname", S, {"max_length": 64}),
            ("lastname", S, {"max_length": 64}),
            ("domainname", S, {"max_length": 1024}),
            ("internalemailaddress", S, {"max_length": 100}),
            ("azureactivedirectoryobjectid", UID, {}),
            ("applicationid", UID, {}),
            ("isdisabled", B, {}),
            (
                "accessmode",
                PL,
                {
                    "options": {
                        0: "Read-Write",
                        1: "Administrative",
                        2: "Read",
                        3: "Support User",
                        4: "Non-interactive",
                        5: "Delegated Admin",
                    }
                },
            ),
            ("businessunitid", "Lookup", {"targets": ("businessunit",), "required": "SystemRequired"}),
        ],
    },
    "businessunit": {
        "schema": "BusinessUnit",
        "set": "businessunits",
        "otc": 10,
        "name": "name",
        "ownership": "BusinessOwned",
        "display": ("Business Unit", "Business Units"),
        "cols": [
            ("name", S, {"max_length": 160, "required": "SystemRequired"}),
            ("parentbusinessunitid", "Lookup", {"targets": ("businessunit",)}),
        ],
    },
    "team": {
        "schema": "Team",
        "set": "teams",
        "otc": 9,
        "name": "name",
        "ownership": "BusinessOwned",
        "display": ("Team", "Teams"),
        "cols": [
            ("name", S, {"max_length": 160, "required": "SystemRequired"}),
            ("teamtype", PL, {"options": {0: "Owner", 1: "Access", 2: "Security Group", 3: "Office Group"}}),
            ("azureactivedirectoryobjectid", UID, {}),
            ("businessunitid", "Lookup", {"targets": ("businessunit",), "required": "SystemRequired"}),
        ],
    },
    "list": {
        "schema": "List",
        "set": "lists",
        "otc": 4300,
        "name": "listname",
        "display": ("Marketing List", "Marketing Lists"),
        "cols": [
            ("listname", S, {"max_length": 128, "required": "SystemRequired"}),
            ("type", B, {}),
            ("createdfromcode", PL, {"options": {1: "Account", 2: "Contact", 4: "Lead"}}),
            ("membercount", I, {}),
            ("description", M, {"max_length": 2000}),
            ("query", M, {"max_length": 1048576}),
        ],
        "state": ({0: "Active", 1: "Inactive"}, {0: "Active", 1: "Inactive"}),
    },
    "listmember": {
        "schema": "ListMember",
        "set": "listmembers",
        "otc": 4301,
        "name": None,
        "ownership": "None",
        "display": ("Marketing List Member", "Marketing List Members"),
        "cols": [
            ("listid", "Lookup", {"targets": ("list",)}),
            ("entityid", "Lookup", {"targets": ("account", "contact", "lead")}),
            ("entitytype", "EntityName", {}),
        ],
    },
}

# Relationship names for lookups with a documented or well-known system name; other lookups get a generated name.
_KNOWN_RELATIONSHIPS = {
    ("account", "primarycontactid", "contact"): ("account_primary_contact", "account_primary_contact"),
    ("account", "parentaccountid", "account"): ("account_parent_account", "account_parent_account"),
    ("account", "masterid", "account"): ("account_master_account", "account_master_account"),
    ("contact", "masterid", "contact"): ("contact_master_contact", "contact_master_contact"),
    ("lead", "masterid", "lead"): ("lead_master_lead", "lead_master_lead"),
    ("contact", "parentcustomerid", "account"): ("contact_customer_accounts", "contact_customer_accounts"),
    ("contact", "parentcustomerid", "contact"): ("contact_customer_contacts", "contact_customer_contacts"),
    ("opportunity", "customerid", "account"): ("opportunity_customer_accounts", "opportunity_customer_accounts"),
    ("opportunity", "customerid", "contact"): ("opportunity_customer_contacts", "opportunity_customer_contacts"),
    ("opportunity", "parentaccountid", "account"): ("opportunity_parent_account", "opportunity_parent_account"),
    ("opportunity", "parentcontactid", "contact"): ("opportunity_parent_contact", "opportunity_parent_contact"),
    ("incident", "customerid", "account"): ("incident_customer_accounts", "incident_customer_accounts"),
    ("incident", "customerid", "contact"): ("incident_customer_contacts", "incident_customer_contacts"),
    ("incident", "primarycontactid", "contact"): ("contact_as_primary_contact", "contact_as_primary_contact"),
    ("lead", "customerid", "account"): ("lead_customer_accounts", "lead_customer_accounts"),
    ("lead", "customerid", "contact"): ("lead_customer_contacts", "lead_customer_contacts"),
    ("lead", "parentaccountid", "account"): ("lead_parent_account", "lead_parent_account"),
    ("lead", "parentcontactid", "contact"): ("lead_parent_contact", "lead_parent_contact"),
    ("systemuser", "businessunitid", "businessunit"): ("business_unit_system_users", "business_unit_system_users"),
    ("team", "businessunitid", "businessunit"): ("business_unit_teams", "business_unit_teams"),
    ("businessunit", "parentbusinessunitid", "businessunit"): (
        "business_unit_parent_business_unit",
        "business_unit_parent_business_unit",
    ),
    ("listmember", "listid", "list"): ("listmember_list", "listmember_list"),
    ("account", "originatingleadid", "lead"): ("account_originating_lead", "account_originating_lead"),
    ("contact", "originatingleadid", "lead"): ("contact_originating_lead", "contact_originating_lead"),
    ("opportunity", "originatingleadid", "lead"): ("opportunity_originating_lead", "opportunity_originating_lead"),
}


# statuscode -> statecode (StatusOptionMetadata.State); the first status of a state is its default
STATUS_STATE: dict[str, dict[int, int]] = {
    "account": {1: 0, 2: 1},
    "contact": {1: 0, 2: 1},
    "lead": {1: 0, 2: 0, 3: 1, 4: 2, 5: 2, 6: 2, 7: 2},
    "opportunity": {1: 0, 2: 0, 3: 1, 4: 2, 5: 2},
    "incident": {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 1000: 1, 6: 2, 2000: 2},
    "list": {0: 0, 1: 1},
}

# Webhook registration tables (serviceendpoint, sdkmessage*, plugintype): specs live with the delivery code.
from .webhook_tables import REGISTRATION_RELATIONSHIPS, REGISTRATION_TABLES  # noqa: E402

_SPECS.update(REGISTRATION_TABLES)
_KNOWN_RELATIONSHIPS.update(REGISTRATION_RELATIONSHIPS)

# System jobs (BulkDelete writes one row per job): spec with the bulk handlers' constants.
from .asyncjobs import ASYNC_OPERATION_TABLES, ASYNC_STATUS_STATE  # noqa: E402

_SPECS.update(ASYNC_OPERATION_TABLES)
STATUS_STATE.update(ASYNC_STATUS_STATE)

# Activities, activity parties and currencies: specs and relationship names from the entity reference.
from .activities import ACTIVITY_RELATIONSHIPS, ACTIVITY_STATUS_STATE, ACTIVITY_TABLES  # noqa: E402
from .labels import display_name  # noqa: E402

_SPECS.update(ACTIVITY_TABLES)
from .message_tables import MESSAGE_RELATIONSHIPS, MESSAGE_STATUS_STATE, MESSAGE_TABLES  # noqa: E402

_SPECS.update(MESSAGE_TABLES)
_KNOWN_RELATIONSHIPS.update(MESSAGE_RELATIONSHIPS)
STATUS_STATE.update(MESSAGE_STATUS_STATE)
_KNOWN_RELATIONSHIPS.update(ACTIVITY_RELATIONSHIPS)
STATUS_STATE.update(ACTIVITY_STATUS_STATE)


def _currency_columns(cols: list[tuple[str, str, dict[str, object]]]) -> list[tuple[str, str, dict[str, object]]]:
    """Dataverse adds a currency, an exchange rate and a read-only ``<column>_base`` Money column (the value in the
    organization's base currency) to every table with money columns, and a currency to every activity."""
    out: list[tuple[str, str, dict[str, object]]] = [
        ("transactioncurrencyid", "Lookup", {"targets": ("transactioncurrency",)}),
        ("exchangerate", DEC, {"valid_for_create": False, "valid_for_update": False}),
    ]
    for name, typ, _extra in cols:
        if typ == MNY:
            out.append(
                (
                    f"{name}_base",
                    MNY,
                    {
                        "valid_for_create": False,
                        "valid_for_update": False,
                        "extra": {"AttributeOf": name, "IsBaseCurrency": True},
                        "base_of": name,
                    },
                )
            )
    return out


def _system_columns(logical: str, ownership: str, state: object) -> list[tuple[str, str, dict[str, object]]]:
    """Columns every table carries: audit, version, state and (for user-owned tables) ownership."""
    cols: list[tuple[str, str, dict[str, object]]] = [
        ("createdon", DT, {"valid_for_create": False, "valid_for_update": False}),
        ("modifiedon", DT, {"valid_for_create": False, "valid_for_update": False}),
        ("overriddencreatedon", DT, {"valid_for_update": False}),
        ("versionnumber", "BigInt", {"valid_for_create": False, "valid_for_update": False}),
        ("importsequencenumber", I, {"valid_for_update": False}),
    ]
    for col in ("createdby", "modifiedby", "createdonbehalfby", "modifiedonbehalfby"):
        cols.append((col, "Lookup", {"targets": ("systemuser",), "valid_for_create": False, "valid_for_update": False}))
    if ownership == "UserOwned":
        cols += [
            ("ownerid", "Owner", {"targets": ("systemuser", "team"), "required": "SystemRequired"}),
            (
                "owninguser",
                "Lookup",
                {"targets": ("systemuser",), "valid_for_create": False, "valid_for_update": False},
            ),
            ("owningteam", "Lookup", {"targets": ("team",), "valid_for_create": False, "valid_for_update": False}),
            (
                "owningbusinessunit",
                "Lookup",
                {"targets": ("businessunit",), "valid_for_create": False, "valid_for_update": False},
            ),
        ]
    if state:
        st, su = cast(tuple[dict[int, str], dict[int, str]], state)
        cols += [
            ("statecode", "State", {"options": st}),
            ("statuscode", "Status", {"options": su, "status_states": STATUS_STATE[logical]}),
        ]
    return cols


def _relationship_for(table: str, attr: Attribute, target: str) -> Relationship:
    """Name a 1:N relationship the way Dataverse names the system ones (owner_*, lk_*base_createdby, ...)."""
    target_pk = TABLES_PK[target]
    polymorphic = len(attr.targets) > 1 and attr.type != "Owner"
    nav = f"{attr.name}_{target}{attr.nav_suffix}" if polymorphic else attr.name
    known = _KNOWN_RELATIONSHIPS.get((table, attr.name, target))
    plural = _SPECS[table]["set"]
    if known:
        schema, coll = known
    elif attr.type == "Owner":
        schema, coll = f"owner_{plural}", f"owner_{plural}"
        target_pk = "ownerid"
        target = "owner"
    elif attr.name in ("createdby", "modifiedby", "createdonbehalfby", "modifiedonbehalfby"):
        schema = f"lk_{table}base_{attr.name}"
        coll = schema
    elif attr.name == "owninguser":
        schema = coll = f"user_{plural}"
    elif attr.name == "owningteam":
        schema = coll = f"team_{plural}"
    elif attr.name == "owningbusinessunit":
        schema = coll = f"business_unit_{plural}"
    else:
        schema = coll = f"{table}_{attr.name}_{target}"
    return Relationship(schema, target, target_pk, table, attr.name, nav, coll)


TABLES_PK = {name: str(spec.get("pk", f"{name}id")) for name, spec in _SPECS.items()}


def build_tables() -> tuple[dict[str, Table], list[Relationship]]:
    """Materialise the compact specs into Table/Attribute/Relationship objects."""
    tables: dict[str, Table] = {}
    for logical, spec in _SPECS.items():
        ownership = str(spec.get("ownership", "UserOwned"))
        display = spec["display"]
        t = Table(
            logical_name=logical,
            schema_name=str(spec["schema"]),
            entity_set=str(spec["set"]),
            primary_id=TABLES_PK[logical],
            primary_name=spec["name"],  # type: ignore[arg-type]
            object_type_code=int(spec["otc"]),  # type: ignore[call-overload]
            ownership=ownership,
            display_name=display[0],  # type: ignore[index]
            display_collection_name=display[1],  # type: ignore[index]
        )
        if spec.get("activity"):
            t.extra["IsActivity"] = True
        if logical == "activityparty":
            t.extra["IsActivityParty"] = True
        pk = Attribute(
            t.primary_id,
            UID,
            is_primary_id=True,
            valid_for_update=False,
            entity=logical,
            display=display_name(logical, t.primary_id),
        )
        t.attributes[pk.name] = pk
        cols: list[tuple[str, str, dict[str, object]]] = list(spec["cols"])  # type: ignore[call-overload]
        if spec.get("activity") or any(typ == MNY for _n, typ, _e in cols):
            cols += _currency_columns(cols)
        for name, typ, extra in cols + _system_columns(logical, ownership, spec.get("state")):
            extra = dict(extra)
            base_of = cast(str | None, extra.pop("base_of", None))
            extra.setdefault("display", display_name(logical, name, base_of))
            a = Attribute(name, typ, entity=logical, **extra)  # type: ignore[arg-type]
            a.is_primary_name = name == t.primary_name
            t.attributes[name] = a
        tables[logical] = t
    rels: list[Relationship] = []
    for t in tables.values():
        for a in t.attributes.values():
            if a.is_lookup:
                targets = a.targets[:1] if a.type == "Owner" else a.targets
                for target in targets:
                    rels.append(_relationship_for(t.logical_name, a, target))
    return tables, rels
