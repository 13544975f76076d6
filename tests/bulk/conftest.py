"""The record actions' fake Dataverse (metadata for account, contact, opportunity) serves the bulk writer's tests."""

from __future__ import annotations

from tests.records.conftest import FakeDataverse, conn, fake, runtime

__all__ = ["FakeDataverse", "conn", "fake", "runtime"]
