"""The record actions' fake Dataverse (account, contact, opportunity metadata) serves the FetchXML unit tests too."""

from __future__ import annotations

from tests.records.conftest import FakeDataverse, conn, fake, runtime

__all__ = ["FakeDataverse", "conn", "fake", "runtime"]
