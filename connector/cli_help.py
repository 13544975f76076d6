"""``d365 run ID --help``: the action's inputs, read from its input schema, under the usual options.

One ``run`` command serves every action, built-in or from a pack, so its help cannot be written in advance: the action
id is read from the arguments before click answers ``--help``, and the inputs are drawn from the bundled (``$ref``-free)
schema, so a pack's action is described exactly as a built-in one.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import click

from connector.errors import ConnectorError

_HELP_KEY = "d365.run.help"
_SEPARATORS = (".", "=", ":")


class ActionCommand(click.Command):
    """A command whose first argument names an action, and whose help lists that action's inputs."""

    action_param = "action_id"

    def __init__(self, *args: Any, runtime: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runtime = runtime

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        action_id = self._help_requested_for(ctx, args)
        if action_id is not None:
            ctx.meta[_HELP_KEY] = self._inputs_help(ctx, action_id)
        return super().parse_args(ctx, args)

    def _help_requested_for(self, ctx: click.Context, args: list[str]) -> str | None:
        """The action id when ``--help`` is among ``args``: click answers help before it reads any argument."""
        help_option = self.get_help_option(ctx)
        if help_option is None or ctx.resilient_parsing or not set(help_option.opts) & set(args):
            return None
        try:
            opts, _, _ = self.make_parser(ctx).parse_args(args=list(args))
        except click.UsageError:
            return None  # click reports it again, the same way, when it parses for real
        action_id = opts.get(self.action_param)
        return action_id if help_option.name in opts and isinstance(action_id, str) else None

    def _inputs_help(self, ctx: click.Context, action_id: str) -> tuple[str, list[tuple[str, str]], list[str]]:
        """(heading, one row per input, closing lines); an unknown action is a usage error (exit 2)."""
        try:
            runtime = self._runtime()
            info = runtime.manifest.action(action_id)
            if info is None:
                ctx.fail(f"unknown action {action_id!r}; `d365 actions list` lists the actions")
            schema = runtime.store.bundled(info.input_schema)
        except ConnectorError as exc:
            return f"Inputs of {action_id}", [], [f"(not available: {exc.message})"]
        closing = [*_groups(schema), "", "--set KEY=TEXT gives text; --set KEY:=JSON anything else (42, true, [..])."]
        example = _example(info.examples, schema)
        if example is not None:
            title, inputs = example
            command = ["d365", "run", action_id, "--connection", "conn.json"]
            command += [part for arg in set_arguments(inputs) for part in ("--set", arg)]
            closing += ["", f"Example{f' ({title})' if title else ''}:", "  " + shlex.join(command)]
        return f"Inputs of {action_id} ({info.label})", input_rows(schema), closing

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        found = ctx.meta.get(_HELP_KEY)
        if found is None:
            formatter.write_paragraph()
            formatter.write_text("`d365 run ID --help` lists the inputs of action ID; `d365 actions list` the actions.")
        else:
            heading, rows, closing = found
            with formatter.section(heading):
                if rows:
                    formatter.write_dl(rows)
                for line in closing:
                    # Written as is: a wrapped command line would no longer paste into a shell.
                    formatter.write(f"{'':>{formatter.current_indent}}{line}\n" if line else "\n")
        super().format_epilog(ctx, formatter)


def input_rows(schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, "Title: type, required, default x") for each top-level input of a bundled schema."""
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        prop = prop if isinstance(prop, Mapping) else {}
        facts = [type_label(prop)]
        if name in required:
            facts.append("required")
        if "default" in prop:
            facts.append(f"default {json.dumps(prop['default'])}")
        title = prop.get("title") or prop.get("description") or ""
        rows.append((name, f"{title}: {', '.join(facts)}" if title else ", ".join(facts)))
    return rows


def type_label(schema: Any) -> str:
    """A short reading of a schema's type: ``string (uuid)``, ``array of string``, ``"create" or "update"``."""
    if not isinstance(schema, Mapping):
        return "any"
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " or ".join(json.dumps(value) for value in schema["enum"])
    titled = schema.get("oneOf")
    if isinstance(titled, list) and titled and all(isinstance(b, Mapping) and "const" in b for b in titled):
        return " or ".join(json.dumps(b["const"]) for b in titled)
    kinds = schema.get("type")
    labels: list[str] = []
    for kind in kinds if isinstance(kinds, list) else [kinds] if isinstance(kinds, str) else []:
        if kind == "array" and isinstance(schema.get("items"), Mapping):
            labels.append(f"array of {type_label(schema['items'])}")
        elif kind == "string" and isinstance(schema.get("format"), str):
            labels.append(f"string ({schema['format']})")
        else:
            labels.append(kind)
    if not labels:
        branches = [b for key in ("oneOf", "anyOf", "allOf") for b in schema.get(key, []) if isinstance(b, Mapping)]
        labels = [type_label(b) for b in branches if {"type", "const", "enum"} & b.keys()]
    return " or ".join(dict.fromkeys(labels)) or "any"


def _groups(schema: Mapping[str, Any]) -> list[str]:
    """Requirements on several inputs at once (``anyOf`` of ``required`` lists), which no single row can show."""
    lines = []
    for key, words in (("anyOf", ""), ("oneOf", "exactly one of ")):
        branches = schema.get(key, [])
        names = [b["required"] for b in branches if isinstance(b, Mapping) and b.get("required")]
        if names and len(names) == len(branches):
            lines.append(f"Also required: {words}{' or '.join(' and '.join(group) for group in names)}.")
    return lines


def _example(examples: Any, schema: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """The first example that sets something: the manifest's (it has a title), else the schema's."""
    candidates = [(str(e.get("title", "")), e.get("input")) for e in examples if isinstance(e, Mapping)]
    candidates += [("", e) for e in schema.get("examples", [])]
    usable = [(title, inputs) for title, inputs in candidates if isinstance(inputs, Mapping)]
    return next((c for c in usable if c[1]), usable[0] if usable else None)


def set_arguments(inputs: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``--set`` values that rebuild ``inputs``: text as ``key=value``, objects by dotted keys, the rest as JSON."""
    arguments = []
    for name, value in inputs.items():
        key = f"{prefix}{name}"
        nestable = isinstance(value, Mapping) and value
        if nestable and all(sub and not any(s in sub for s in _SEPARATORS) for sub in value):
            arguments += set_arguments(value, f"{key}.")
        elif isinstance(value, str):
            arguments.append(f"{key}={value}")
        else:
            arguments.append(f"{key}:={json.dumps(value, ensure_ascii=False)}")
    return arguments
