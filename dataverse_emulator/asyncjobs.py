"""The ``asyncoperation`` (System Job) table: where a ``BulkDelete`` job's state can be read back.

Why a table spec of its own, with no imports: ``model`` merges it into the preloaded tables (as it does the webhook
registration tables), and the bulk handlers only write rows, so nothing here may import the model back.
"""

from __future__ import annotations

BULK_DELETE_OPERATION = 13
COMPLETED, SUCCEEDED = 3, 30

ASYNC_OPERATION_TABLES: dict[str, dict[str, object]] = {
    "asyncoperation": {
        "schema": "AsyncOperation",
        "set": "asyncoperations",
        "otc": 4700,
        "name": "name",
        "ownership": "OrganizationOwned",
        "display": ("System Job", "System Jobs"),
        "cols": [
            ("name", "String", {"max_length": 500}),
            ("operationtype", "Picklist", {"options": {BULK_DELETE_OPERATION: "Bulk Delete"}}),
            ("message", "Memo", {"max_length": 1048576}),
            ("completedon", "DateTime", {}),
        ],
        "state": (
            {0: "Ready", 1: "Suspended", 2: "Locked", COMPLETED: "Completed"},
            {
                0: "Waiting For Resources",
                10: "Waiting",
                20: "In Progress",
                21: "Pausing",
                22: "Canceling",
                SUCCEEDED: "Succeeded",
                31: "Failed",
                32: "Canceled",
            },
        ),
    }
}

#: statuscode -> statecode (AsyncOperation StatusOptionMetadata.State)
ASYNC_STATUS_STATE = {"asyncoperation": {0: 0, 10: 1, 20: 2, 21: 2, 22: 2, SUCCEEDED: 3, 31: 3, 32: 3}}
