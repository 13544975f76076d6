"""A secret value, and the three ways a setting may give one: inline, ``{"env": NAME}`` or ``{"file": PATH}``.

Why a module of its own: the connection settings and the webhook trigger's configuration both take secrets the same
way, and both must keep them out of reprs, logs, tracebacks and pickles. :class:`Secret` is a pydantic ``SecretStr``
(so the connection models validate and serialise it as a secret) that also prints the same mask everywhere, refuses to
be pickled and compares in constant time. Errors from :func:`resolve_secret` name the setting and the fix, never the
value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from connector.errors import ConnectionConfigError, preview

__all__ = ["Secret", "resolve_secret"]


class Secret(SecretStr):
    """A secret that never shows itself in ``repr``, ``str``, logs or tracebacks; :meth:`reveal` gives the value."""

    def reveal(self) -> str:
        """The secret itself; only for the one place that sends it."""
        return self.get_secret_value()

    def _display(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self.reveal().encode(), other.reveal().encode())

    def __hash__(self) -> int:
        # SecretStr hashes the value itself; a digest keeps equal secrets equal without handing the value to hash().
        return hash(("Secret", hashlib.sha256(self.reveal().encode()).hexdigest()))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self  # immutable; copying must not go through pickling, which is refused below

    def __reduce__(self) -> Any:
        # Pickling would write the secret into a file or a queue in clear; refuse instead of leaking silently.
        raise TypeError("Secret values cannot be pickled")


def resolve_secret(value: Any, name: str, base_dir: Path | None) -> Secret:
    """Turn an inline value, ``{"env": NAME}`` or ``{"file": PATH}`` into a :class:`Secret`; errors never echo it."""
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        if not value:
            raise ConnectionConfigError(
                f"{name} is empty: give the value, {{'env': NAME}} or {{'file': PATH}}", field=name
            )
        return Secret(value)
    if isinstance(value, Mapping) and set(value) == {"env"} and isinstance(value["env"], str):
        return _from_env(value["env"], name)
    if isinstance(value, Mapping) and set(value) == {"file"} and isinstance(value["file"], str):
        return _from_file(value["file"], name, base_dir)
    raise ConnectionConfigError(f"{name} must be the value, {{'env': NAME}} or {{'file': PATH}}", field=name)


def _named(text: str) -> str:
    """A variable name or path as a message shows it: as is when short and printable, else quoted and cut."""
    return text if len(text) <= 120 and text.isprintable() else preview(text, 120)


def _from_env(var: str, name: str) -> Secret:
    env_value = os.environ.get(var)
    if not env_value:
        raise ConnectionConfigError(
            f"{name} is read from the environment variable {_named(var)}, which is not set or empty: set {_named(var)} "
            f"in the environment the connector runs in, or give {name} another way",
            field=name,
        )
    return Secret(env_value)


def _from_file(file: str, name: str, base_dir: Path | None) -> Secret:
    path = Path(file).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    shown = _named(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConnectionConfigError(
            f"{name} is read from the file {shown}, which cannot be read ({exc.strerror or type(exc).__name__}): "
            f"check the path (relative paths start at the connection file's folder) and its permissions",
            field=name,
        ) from None
    # Editors and `echo` add a final newline that is never part of the secret.
    text = text.rstrip("\r\n")
    if not text:
        raise ConnectionConfigError(f"{name} is read from the file {shown}, which is empty", field=name)
    return Secret(text)
