"""Reverse-ETL sync (issue 18): warehouse rows into a Dataverse table through a checked column mapping.

``definition`` reads and checks the definition file, ``sources`` streams source rows, ``mapping`` turns them into
``write_entities`` records against the table's metadata; the state store, planner, engine and ledger build on those.
"""
