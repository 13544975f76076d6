"""``--sample-data``: a small organization in use, the same rows for the same ``--seed``.

Why: examples, demos and tests of reading code need an organization that already holds data the way a real one does
(accounts with contacts, leads, opportunities, activities regarding them, a marketing list, alternate keys in use)
instead of each one creating its own first. What the README's action examples take for granted is here too: the keys
on ``account.accountnumber``, on account ``name`` + ``address1_postalcode`` and on ``contact.emailaddress1``, the
custom table ``new_bankaccount`` with ``new_code`` and ``new_region``, the file column ``new_contract`` on account,
the accounts ``A-1001`` (Contoso Ltd) and ``A-1002`` (Fabrikam Inc) and the contact ``ada@example.com``.

Loading is idempotent: the schema is made once (and persisted under ``--db`` like any schema write), keys are added
when missing, rows only into an organization that does not hold them yet; the admin reset loads them again.
Row dates are fixed (2025), never the clock, so the same seed gives the same rows, field for field.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import TYPE_CHECKING, Any

from . import schema
from .currency import BASE_CURRENCY_ID
from .model import STATUS_STATE, Key, Table, meta_id
from .query import fmt_dt
from .records import computed
from .storage import type_col

if TYPE_CHECKING:
    from .emulator import Emulator

DEFAULT_SEED = 365
COUNTS = {"account": 200, "contact": 300, "lead": 120, "opportunity": 80, "task": 150, "phonecall": 100, "email": 100}
LIST_MEMBERS = 60
EUR_RATE = 0.92
#: (table, key schema name, columns): the README's examples use all three
KEYS = (
    ("account", "new_accountnumber_key", ["accountnumber"]),
    ("account", "new_name_postalcode_key", ["name", "address1_postalcode"]),
    ("contact", "new_email_key", ["emailaddress1"]),
)
FIXED_ACCOUNTS = (("A-1001", "Contoso Ltd"), ("A-1002", "Fabrikam Inc"))
#: The team the README's ``assign_entity`` example gives a row to (a fixed id, as a reader copies it).
SALES_TEAM = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

_FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Dennis",
    "Radia",
    "John",
    "Katherine",
    "Tim",
    "Hedy",
    "Linus",
]
_LAST = [
    "Hopper",
    "Turing",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Ritchie",
    "Perlman",
    "McCarthy",
    "Johnson",
    "Berners-Lee",
    "Lamarr",
]
_PREFIX = [
    "Northwind",
    "Adventure",
    "Blue",
    "Alpine",
    "Coho",
    "Litware",
    "Proseware",
    "Tailspin",
    "Wingtip",
    "Woodgrove",
    "Lucerne",
    "Relecloud",
]
_SUFFIX = [
    "Traders",
    "Works",
    "Systems",
    "Partners",
    "Foods",
    "Airlines",
    "Bank",
    "Logistics",
    "Studios",
    "Labs",
    "Outfitters",
    "Consulting",
]
_CITIES = (
    ("Redmond", "WA", "98052"),
    ("Seattle", "WA", "98101"),
    ("Portland", "OR", "97201"),
    ("Austin", "TX", "73301"),
    ("Boston", "MA", "02108"),
    ("Denver", "CO", "80202"),
    ("Chicago", "IL", "60601"),
)
_TOPICS = [
    "Renewal",
    "Upgrade",
    "New offices",
    "Support contract",
    "Pilot",
    "Training",
    "Expansion",
    "Hardware refresh",
]


class _Gen:
    """One seeded stream for ids, choices and dates."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"sample-data-{seed}")
        self.epoch = dt.datetime(2025, 1, 6, 9, 0, tzinfo=dt.UTC)

    def guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def when(self, days: int = 330) -> str:
        return fmt_dt(self.epoch + dt.timedelta(days=self.rng.randrange(days), minutes=self.rng.randrange(600)))

    def pick(self, seq: Any) -> Any:
        return self.rng.choice(seq)


def load(emu: Emulator, seed: int | None) -> None:
    """Make the sample organization (see the module docstring); safe to call on every start and after a reset."""
    with emu.store.transaction():
        _schema(emu)
    _keys(emu)
    if emu.store.scalar("SELECT COUNT(*) FROM account WHERE accountnumber = ?", [FIXED_ACCOUNTS[0][0]]):
        return
    _rows(emu, _Gen(DEFAULT_SEED if seed is None else seed))


def _labels(text: str) -> dict[str, Any]:
    return {"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}]}


def _string_column(schema: str, label: str, primary: bool = False) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "SchemaName": schema,
        "IsPrimaryName": primary,
        "MaxLength": 100,
        "RequiredLevel": {"Value": "None"},
        "DisplayName": _labels(label),
    }


def _schema(emu: Emulator) -> None:
    """The custom table and the file column the README's examples use, made as a maker would make them."""
    if "new_bankaccount" not in emu.tables:
        schema.do_create_table(
            emu,
            {
                "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
                "SchemaName": "new_BankAccount",
                "DisplayName": _labels("Bank account"),
                "DisplayCollectionName": _labels("Bank accounts"),
                "OwnershipType": "UserOwned",
                "HasActivities": False,
                "HasNotes": False,
                "IsActivity": False,
                "Attributes": [_string_column("new_Name", "Name", primary=True)],
            },
        )
        bank = emu.tables["new_bankaccount"]
        schema.do_create_column(emu, bank, _string_column("new_Code", "Code"))
        schema.do_create_column(emu, bank, _string_column("new_Region", "Region"))
    if "new_contract" not in emu.tables["account"].attributes:
        schema.do_create_column(
            emu,
            emu.tables["account"],
            {
                "@odata.type": "Microsoft.Dynamics.CRM.FileAttributeMetadata",
                "SchemaName": "new_Contract",
                "MaxSizeInKB": 10240,
                "RequiredLevel": {"Value": "None"},
                "DisplayName": _labels("Contract"),
            },
        )


def _keys(emu: Emulator) -> None:
    """The alternate keys, Active from the start (an organization in use built their indexes long ago)."""
    for table, name, columns in KEYS:
        if any(k.schema_name == name for k in emu.store.keys.get(table, [])):
            continue
        key = Key(name, table, list(columns), emu.clock() - 10**9, meta_id("key", table, name))
        key.display_name = name
        emu.store.add_key(key)


class _Rows:
    """Rows per table, completed with the columns Dataverse fills (owner, audit, state, computed) before insert."""

    def __init__(self, emu: Emulator, gen: _Gen) -> None:
        self.emu, self.gen = emu, gen
        self.owner = emu.identity.user_oid  # the interactive test user owns the organization's data
        self.by_table: dict[str, list[dict[str, Any]]] = {}

    def add(self, table: str, values: dict[str, Any], lookups: dict[str, tuple[str, str]] | None = None) -> str:
        t: Table = self.emu.tables[table]
        row = dict(values)
        rid = row.setdefault(t.primary_id, self.gen.guid())
        for col, (target, target_id) in (lookups or {}).items():
            row[col], row[type_col(col)] = target_id, target
        created = self.gen.when()
        row.update(createdon=created, modifiedon=created, versionnumber=self.emu.store.next_version())
        for col in ("createdby", "modifiedby"):
            row[col], row[type_col(col)] = self.owner, "systemuser"
        if "ownerid" in t.attributes:
            row["ownerid"], row["ownerid__type"] = self.owner, "systemuser"
            row["owninguser"], row["owninguser__type"] = self.owner, "systemuser"
            row["owningbusinessunit"], row["owningbusinessunit__type"] = self.emu.root_bu, "businessunit"
        if "statecode" in t.attributes:
            row.setdefault("statecode", 0)
            states = STATUS_STATE.get(table, {1: 0, 2: 1})
            row.setdefault("statuscode", next(s for s, st in states.items() if st == row["statecode"]))
        computed(t, row)
        self.by_table.setdefault(table, []).append(row)
        return str(rid)

    def insert(self) -> None:
        for table, rows in self.by_table.items():
            self.emu.store.insert_many(table, rows)


def _rows(emu: Emulator, gen: _Gen) -> None:
    out = _Rows(emu, gen)
    usd = BASE_CURRENCY_ID  # the organization's base currency (bootstrap row)
    eur = out.add(
        "transactioncurrency",
        {
            "currencyname": "Euro",
            "isocurrencycode": "EUR",
            "currencysymbol": "€",
            "exchangerate": EUR_RATE,
            "currencyprecision": 2,
        },
    )
    money = {"transactioncurrencyid": ("transactioncurrency", usd)}
    accounts = _accounts(out, gen, money, {"transactioncurrencyid": ("transactioncurrency", eur)})
    contacts = _contacts(out, gen, accounts)
    leads = _leads(out, gen)
    opportunities = _opportunities(out, gen, accounts, contacts, leads, money)
    _activities(out, gen, {"account": accounts, "contact": contacts, "opportunity": opportunities, "lead": leads})
    subscribers = out.add("list", {"listname": "Newsletter subscribers", "createdfromcode": 2, "type": 0})
    members = gen.rng.sample(contacts, LIST_MEMBERS)
    for cid in members:
        out.add(
            "listmember",
            {"entitytype": "contact"},
            {"listid": ("list", subscribers), "entityid": ("contact", cid)},
        )
    out.by_table["list"][0]["membercount"] = len(members)
    for i, region in enumerate(("North", "South", "East", "West") * 5):
        out.add(
            "new_bankaccount",
            {"new_name": f"Operating account {i + 1}", "new_code": f"BA-{i + 1:04d}", "new_region": region},
        )
    # last, so the generated rows above stay what they were before it existed
    out.add(
        "team",
        {"teamid": SALES_TEAM, "name": "Sales", "teamtype": 0},
        {"businessunitid": ("businessunit", emu.root_bu)},
    )
    out.insert()


def _accounts(out: _Rows, gen: _Gen, money: dict[str, tuple[str, str]], euros: dict[str, tuple[str, str]]) -> list[str]:
    """Accounts; every tenth one keeps its books in euros (its ``_base`` columns in dollars)."""
    ids = []
    names = {name for _, name in FIXED_ACCOUNTS}
    for i in range(COUNTS["account"]):
        if i < len(FIXED_ACCOUNTS):
            number, name = FIXED_ACCOUNTS[i]
        else:
            number = f"A-{1001 + i}"
            name = f"{gen.pick(_PREFIX)} {gen.pick(_SUFFIX)}"
            while name in names:
                name = f"{gen.pick(_PREFIX)} {gen.pick(_SUFFIX)} {gen.rng.randrange(2, 99)}"
        names.add(name)
        city, state, postal = gen.pick(_CITIES)
        values = {
            "name": name,
            "accountnumber": number,
            "telephone1": f"555 {gen.rng.randrange(100, 999)} {gen.rng.randrange(1000, 9999)}",
            "address1_city": city,
            "address1_stateorprovince": state,
            "address1_postalcode": postal,
            "address1_country": "United States",
            "revenue": float(gen.rng.randrange(1, 500) * 100000),
            "numberofemployees": gen.rng.randrange(5, 5000),
            "industrycode": gen.rng.randrange(1, 34),
            "customertypecode": gen.pick((3, 3, 3, 5, 8, 10)),
            "creditonhold": int(gen.rng.random() < 0.05),
            "exchangerate": EUR_RATE if i % 10 == 9 else 1.0,
        }
        ids.append(out.add("account", values, euros if i % 10 == 9 else money))
    return ids


def _contacts(out: _Rows, gen: _Gen, accounts: list[str]) -> list[str]:
    ids = []
    for i in range(COUNTS["contact"]):
        if i == 0:
            first, last, email = "Ada", "Lovelace", "ada@example.com"
        else:
            first, last = gen.pick(_FIRST), gen.pick(_LAST)
            email = f"{first}.{last}.{i}@example.com".lower()
        values = {
            "firstname": first,
            "lastname": last,
            "emailaddress1": email,
            "jobtitle": gen.pick(("Buyer", "CTO", "Engineer", "Office manager", "CFO", "Analyst")),
            "telephone1": f"555 {gen.rng.randrange(100, 999)} {gen.rng.randrange(1000, 9999)}",
        }
        company = {"parentcustomerid": ("account", gen.pick(accounts))} if i else {}
        ids.append(out.add("contact", values, company))
    return ids


def _leads(out: _Rows, gen: _Gen) -> list[str]:
    ids = []
    for i in range(COUNTS["lead"]):
        first, last = gen.pick(_FIRST), gen.pick(_LAST)
        state = gen.pick((0, 0, 0, 1, 2))
        values = {
            "firstname": first,
            "lastname": last,
            "subject": f"{gen.pick(_TOPICS)} inquiry",
            "companyname": f"{gen.pick(_PREFIX)} {gen.pick(_SUFFIX)}",
            "emailaddress1": f"{first}.{last}.lead{i}@example.net".lower(),
            "leadsourcecode": gen.rng.randrange(1, 11),
            "statecode": state,
        }
        ids.append(out.add("lead", values))
    return ids


def _opportunities(
    out: _Rows,
    gen: _Gen,
    accounts: list[str],
    contacts: list[str],
    leads: list[str],
    money: dict[str, tuple[str, str]],
) -> list[str]:
    ids = []
    for i in range(COUNTS["opportunity"]):
        account = gen.pick(accounts)
        lookups = {
            **money,
            "customerid": ("account", account),
            "parentaccountid": ("account", account),
            "parentcontactid": ("contact", gen.pick(contacts)),
        }
        if i % 4 == 0:
            lookups["originatingleadid"] = ("lead", gen.pick(leads))
        values = {
            "name": f"{gen.pick(_TOPICS)} {2025 + i % 2}",
            "estimatedvalue": float(gen.rng.randrange(5, 400) * 1000),
            "closeprobability": gen.rng.randrange(0, 101, 10),
            "opportunityratingcode": gen.rng.randrange(1, 4),
            "estimatedclosedate": fmt_dt(gen.epoch + dt.timedelta(days=gen.rng.randrange(30, 400)))[:10],
            "statecode": gen.pick((0, 0, 0, 1, 2)),
            "exchangerate": 1.0,
        }
        ids.append(out.add("opportunity", values, lookups))
    return ids


def _activities(out: _Rows, gen: _Gen, regarding: dict[str, list[str]]) -> None:
    kinds = ("account", "contact", "opportunity", "lead")
    for table in ("task", "phonecall", "email"):
        for i in range(COUNTS[table]):
            kind = gen.pick(kinds)
            target = gen.pick(regarding[kind])
            subject = {
                "task": f"Follow up: {gen.pick(_TOPICS).lower()}",
                "phonecall": f"Call about {gen.pick(_TOPICS).lower()}",
                "email": f"Re: {gen.pick(_TOPICS)}",
            }[table]
            values: dict[str, Any] = {"subject": subject, "prioritycode": gen.rng.randrange(0, 3)}
            if table == "task":
                values["statecode"] = 1 if i % 3 == 0 else 0
            elif table == "phonecall":
                values |= {"phonenumber": f"555 {gen.rng.randrange(1000, 9999)}", "directioncode": i % 2}
            else:
                values["directioncode"] = 1
            aid = out.add(table, values, {"regardingobjectid": (kind, target)})
            if table == "email" and kind == "contact":
                for party, mask in (((("systemuser", out.owner)), 1), (("contact", target), 2)):
                    out.add(
                        "activityparty",
                        {"participationtypemask": mask},
                        {"activityid": (table, aid), "partyid": party},
                    )
