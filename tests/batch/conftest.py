"""The record actions' fake Dataverse (metadata for account, contact, opportunity) serves the batch unit tests too."""

from __future__ import annotations

from tests.records.conftest import FakeDataverse, conn, fake, runtime

__all__ = ["FakeDataverse", "conn", "fake", "runtime"]
