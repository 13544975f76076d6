"""The exit-code table in the README is the one the CLI uses: same codes, none missing, none invented.

Each code's behaviour is tested where it arises (tests/connector/test_cli.py for 0 to 4 and 130, the e2e progress
tests for 5 and --allow-partial, the interrupt tests for 130 against the emulator); this test keeps the table honest.
"""

from __future__ import annotations

import re
from pathlib import Path

from connector import cli
from connector.errors import ConnectionConfigError, ConnectorError, DataverseApiError, InputError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_exit_code_table_lists_exactly_the_codes_the_cli_uses() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("**Exit codes.**") :].split("\n\n", 2)[1]
    documented = [int(code) for code in re.findall(r"^\| `(\d+)` \|", table, flags=re.MULTILINE)]
    used = {
        0,
        ConnectorError.exit_code,
        InputError.exit_code,
        ConnectionConfigError.exit_code,
        DataverseApiError.exit_code,
        cli.EXIT_PARTIAL,
        cli.EXIT_INTERRUPTED,
    }
    assert sorted(documented) == documented and len(documented) == len(set(documented))
    assert set(documented) == used
