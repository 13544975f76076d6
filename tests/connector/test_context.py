"""The hook ``context``: two-argument hooks are unchanged, a three-argument one gets it and runs other actions."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

from connector.context import ActionContext
from connector.errors import InputError
from connector.runtime import Runtime
from tests.framework.packs import action_entry, io_schemas, make_pack

CODE = textwrap.dedent("""
    seen = []

    @hookimpl
    def old_style(inputs, connection):
        return {"echo": inputs["word"]}

    @hookimpl
    def with_context(inputs, connection, context):
        seen.append(context)
        context.log.info("asking who I am")
        me = context.run_action("get_current_user", {})
        inner = context.run_action("old_style", {"word": inputs["word"]})
        return {"echo": inner["echo"] + " from " + me["user_id"]}

    @hookimpl(wrapper=True)
    def execute_action(action_id, inputs, connection):
        seen.append(action_id)
        return (yield)
""")


@pytest.fixture
def pack(tmp_path: Path) -> Any:
    schemas = {**io_schemas("ctx", "old_style"), **io_schemas("ctx", "with_context")}
    fragment = {"pack": "ctx", "actions": [action_entry("old_style"), action_entry("with_context")]}
    return make_pack(tmp_path, name="ctx", code=CODE, fragment=fragment, schemas=schemas)


def test_a_two_argument_hook_still_works_and_the_spec_offers_context(pack: Any) -> None:
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack])
    assert runtime.broken_packs == {}
    assert runtime.pm.hook.old_style.spec.argnames == ("inputs", "connection", "context")
    assert [i.argnames for i in runtime.pm.hook.old_style.get_hookimpls()] == [("inputs", "connection")]
    assert runtime.run_action("old_style", {"word": "hi"}, connection=None) == {"echo": "hi"}  # type: ignore[arg-type]


def test_a_three_argument_hook_gets_the_context_and_runs_other_actions_through_the_runtime(
    pack: Any, cloud: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack])
    connection = cloud.connect()
    with caplog.at_level(logging.INFO, logger="connector.actions"):
        result = runtime.run_action("with_context", {"word": "hi"}, connection)
    assert result == {"echo": f"hi from {cloud.USER_ID}"}
    outer, context, *calls = pack.module.seen
    assert outer == "with_context" and isinstance(context, ActionContext)
    assert (context.runtime, context.connection, context.action_id) == (runtime, connection, "with_context")
    assert (context.progress, context.cancel) == (None, None)
    assert context.metadata is connection.metadata
    # the nested runs went through execute_action: the wrapper saw them, inside the outer run
    assert calls == ["get_current_user", "old_style"]
    assert [(r.name, r.getMessage()) for r in caplog.records if r.name.startswith("connector.actions")] == [
        ("connector.actions.with_context", "asking who I am")
    ]
    with pytest.raises(InputError) as err:  # nested runs are validated like any other
        context.run_action("old_style", {"word": 5})
    assert [p.path for p in err.value.problems] == ["$.word"]


def test_the_context_is_frozen_and_carries_progress_and_cancel_when_given(pack: Any) -> None:
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack])
    marker = object()
    context = runtime.action_context("old_style", None, progress=print, cancel=marker)  # type: ignore[arg-type]
    assert (context.progress, context.cancel, context.log.name) == (print, marker, "connector.actions.old_style")
    with pytest.raises(AttributeError):
        context.action_id = "other"  # type: ignore[misc]
