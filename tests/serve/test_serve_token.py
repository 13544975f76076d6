"""Where the API token comes from: --token-file, else D365_SERVE_TOKEN, else generated; a short one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.errors import ConnectionConfigError
from connector.serve_auth import read_api_token


def test_the_token_file_wins_over_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text("from-the-file-0123456789\n", encoding="utf-8")
    assert read_api_token(str(file), {"D365_SERVE_TOKEN": "from-the-env-0123456789"}) == (
        "from-the-file-0123456789",
        False,
    )
    assert read_api_token(None, {"D365_SERVE_TOKEN": "from-the-env-0123456789"}) == ("from-the-env-0123456789", False)


def test_a_token_is_generated_when_none_is_given() -> None:
    first, generated = read_api_token(None, {})
    second, _ = read_api_token(None, {})
    assert generated and len(first) >= 32 and first != second


@pytest.mark.parametrize("where", ["file", "env"])
def test_a_short_or_unreadable_token_is_refused(tmp_path: Path, where: str) -> None:
    file = tmp_path / "token"
    file.write_text("tiny-tok", encoding="utf-8")
    with pytest.raises(ConnectionConfigError) as caught:
        read_api_token(str(file) if where == "file" else None, {"D365_SERVE_TOKEN": "tiny-tok"})
    assert "at least 16" in caught.value.message and "tiny-tok" not in caught.value.message
    with pytest.raises(ConnectionConfigError, match="--token-file cannot be read"):
        read_api_token(str(tmp_path / "missing"), {})
