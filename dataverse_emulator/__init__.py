"""A local Dataverse Web API emulator (Starlette on SQLite), answering as Dataverse does.

It imports nothing from ``connector``, ``actions`` or ``triggers``: a misunderstanding of the protocol must not hide
in shared code.
"""

from .app import create_app

__all__ = ["create_app"]
