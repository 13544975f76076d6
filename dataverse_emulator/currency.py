"""The organization's base currency, and the currency of rows with money columns.

Why: a real organization always has a base currency, and Dataverse fills a row's ``transactioncurrencyid`` (the base
currency when the client names none) and copies the currency's ``exchangerate`` whenever a money value or the
currency is written; every ``<column>_base`` is then the value divided by that rate (transactioncurrency.md and the
money columns of account.md: "the exchange rate is used to convert all money fields in the record from the local
currency to the system's default currency"). Clients that read ``_base`` columns or the currency lookup back see what
a real organization gives them.
"""

from __future__ import annotations

from typing import Any

from .model import Table, meta_id
from .storage import Store, type_col

#: stable across restarts and processes, like every id the emulator derives from names
BASE_CURRENCY_ID = meta_id("transactioncurrency", "USD")


def ensure_base_currency(store: Store, now: str) -> None:
    """The US Dollar base currency every organization starts with (exchange rate 1)."""
    if store.exists("transactioncurrency", BASE_CURRENCY_ID):
        return
    store.insert(
        "transactioncurrency",
        {
            "transactioncurrencyid": BASE_CURRENCY_ID,
            "currencyname": "US Dollar",
            "isocurrencycode": "USD",
            "currencysymbol": "$",
            "exchangerate": 1.0,
            "currencyprecision": 2,
            "statecode": 0,
            "statuscode": 1,
            "createdon": now,
            "modifiedon": now,
            "versionnumber": store.next_version(),
        },
    )


def apply(store: Store, table: Table, changes: dict[str, Any], current: dict[str, Any] | None = None) -> None:
    """On a create (``current`` None) or update: default the currency, copy its rate, recompute ``_base`` columns."""
    lookup = table.attributes.get("transactioncurrencyid")
    if "exchangerate" not in table.attributes or lookup is None or not lookup.is_lookup:
        return  # no money here, or the currency table itself
    attrs = table.attributes
    if "transactioncurrencyid" not in changes:
        for c in changes:  # the changes name fewer columns than the table has: look at those
            a = attrs.get(c)
            if a is not None and a.type == "Money" and not a.extra.get("AttributeOf"):
                break
        else:
            return
    money = {a.name: a for a in attrs.values() if a.type == "Money" and not a.extra.get("AttributeOf")}
    merged = {**(current or {}), **changes}
    cur = merged.get("transactioncurrencyid")
    if cur is None and any(merged.get(m) is not None for m in money):
        cur = BASE_CURRENCY_ID
        changes["transactioncurrencyid"], changes[type_col("transactioncurrencyid")] = cur, "transactioncurrency"
    rate = store.scalar("SELECT exchangerate FROM transactioncurrency WHERE transactioncurrencyid = ?", [cur])
    changes["exchangerate"] = rate
    for a in table.attributes.values():
        of = a.extra.get("AttributeOf") if a.type == "Money" else None
        if of in money:
            value = merged.get(of)
            changes[a.name] = None if value is None or not rate else value / float(rate)
