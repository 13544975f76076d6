"""A refresh token kept in a file only its owner can read, for ``authorization_code`` connections.

Why a file of our own rather than a keyring: the connector runs headless (CI, a container, a platform worker) where no
keyring exists, and ``d365 connection login`` must leave something the next run can use. The rules follow what ssh
does with private keys: the file is created with mode 0600 (written to a temporary file in the same folder, then
renamed, so a crash never leaves half a token), and a file that the group or others may read or write is refused,
because someone else may already have copied the token. Refresh tokens rotate on every use; :meth:`TokenStore.save`
is called with each new one.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from connector.errors import ConnectionConfigError

__all__ = ["TokenStore"]

_FORMAT = "d365-connector/token-store/v1"


class TokenStore:
    """The file at ``path`` holding one connection's latest refresh token (never printed: see ``__repr__``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r})"

    def load(self) -> str | None:
        """The stored refresh token, None when the file does not exist; refuse a file others can read."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConnectionConfigError(
                f"token_store {self.path} cannot be opened ({exc.strerror or type(exc).__name__}): check the path "
                "and that it is a regular file owned by you",
                field="token_store",
            ) from None
        with os.fdopen(fd, "r", encoding="utf-8") as file:
            info = os.fstat(file.fileno())
            if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConnectionConfigError(
                    f"token_store {self.path} can be read or written by other users (mode "
                    f"{stat.S_IMODE(info.st_mode):04o}): the refresh token in it may be compromised. Delete the file, "
                    "run `d365 connection login` again (it creates the file with mode 0600), or `chmod 600` it if "
                    "you are sure nobody else read it",
                    field="token_store",
                )
            try:
                data: Any = json.load(file)
            except ValueError:
                data = None
        token = data.get("refresh_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ConnectionConfigError(
                f"token_store {self.path} does not hold a refresh token: run `d365 connection login` to sign in again",
                field="token_store",
            )
        return token

    def save(self, refresh_token: str, **details: Any) -> None:
        """Replace the stored refresh token atomically; the file is created readable by its owner only."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"format": _FORMAT, **details, "refresh_token": refresh_token}, indent=2)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)  # mkstemp creates with mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(body)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
