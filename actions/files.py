"""The file and image column actions: thin hooks over :mod:`connector.files`.

Progress (bytes sent or received) and cancellation come from the run, as for the other long actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import files
from connector import inputs as typed
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl
from connector.progress import current


@hookimpl
def validate_upload_file(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return files.upload_file_problems(typed.UploadFile.of(inputs), connection)


@hookimpl
def validate_download_file(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return files.download_file_problems(typed.DownloadFile.of(inputs), connection)


@hookimpl
def upload_file(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """PATCH the column's file, in one request or in chunks."""
    control = current()
    return files.upload_file(connection, typed.UploadFile.of(inputs), progress=control.progress, cancel=control.cancel)


@hookimpl
def download_file(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """GET the column's file in ranges."""
    control = current()
    return files.download_file(
        connection, typed.DownloadFile.of(inputs), progress=control.progress, cancel=control.cancel
    )
