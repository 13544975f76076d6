"""Reverse-ETL sync: warehouse rows into a Dataverse table, with state, a ledger and resume (issue 18)."""
