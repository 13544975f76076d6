"""The record actions' fake Dataverse (token endpoint, metadata, scripted answers) serves the raw_request tests."""

from __future__ import annotations

from tests.records.conftest import FakeDataverse, conn, fake, runtime

__all__ = ["FakeDataverse", "conn", "fake", "runtime"]
