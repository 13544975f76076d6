"""Phase two of the metadata actions has one shape: each action its own check, taking that action's typed inputs."""

from __future__ import annotations

import inspect

import pytest

from connector import inputs as typed
from connector import metadata_checks


@pytest.mark.parametrize("action_id", sorted(metadata_checks.METADATA_ACTIONS))
def test_each_metadata_action_has_its_own_check_of_its_typed_inputs(action_id: str) -> None:
    check = getattr(metadata_checks, f"{action_id}_problems")
    params = inspect.signature(check).parameters
    assert list(params) == ["inputs", "connection"]
    # annotations stay strings (postponed evaluation): compare by the model's name
    assert params["inputs"].annotation == typed.INPUT_MODELS[action_id].__name__
    assert params["connection"].annotation == "Connection"
