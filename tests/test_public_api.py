"""The package's public surface is deliberate: ``__all__`` is sorted, complete and importable (as httpx pins it)."""

from __future__ import annotations

import connector


def test_public_api_is_sorted_and_importable() -> None:
    assert connector.__all__ == sorted(connector.__all__)
    for name in connector.__all__:
        assert hasattr(connector, name), name


def test_public_api_exports_every_error() -> None:
    from connector import errors

    assert set(errors.__all__) <= set(connector.__all__)
    assert {"Connection", "hookimpl", "hookspec"} <= set(connector.__all__)
