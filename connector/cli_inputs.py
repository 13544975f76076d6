"""What ``d365`` reads before it runs anything: the connection file, ``--input`` and ``--set``/``--param`` pairs.

Kept apart from the commands so every command reads its inputs the same way, and every read goes through
:mod:`connector.strict_json`: a file or pair a person typed is untrusted JSON (``NaN``, depth, lone surrogates are
refused with the place named, never a traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from connector import strict_json
from connector.errors import ConnectionConfigError, InputError, InputProblem
from connector.policy import OperatorPolicy

CONNECTION_ENV = "D365_CONNECTION"


def cli_policy() -> OperatorPolicy:
    """The person running ``d365`` is the operator: ``local`` unless ``D365_POLICY`` says otherwise."""
    return OperatorPolicy.from_env(default="local")


def load_connection_file(path: str | None) -> tuple[dict[str, Any], Path]:
    """Read a connection file given by ``--connection`` or ``D365_CONNECTION``; problems are connection errors."""
    if not path:
        raise ConnectionConfigError(
            f"no connection given: pass --connection FILE or set {CONNECTION_ENV} to a connection file",
            field="connection",
        )
    file = Path(path).expanduser()
    try:
        data = strict_json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConnectionConfigError(f"connection file {str(file)!r} does not exist", field="connection") from None
    except strict_json.StrictJsonError as exc:
        raise ConnectionConfigError(
            f"connection file {str(file)!r} is not valid JSON ({exc}); fix the file", field="connection"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConnectionConfigError(
            f"connection file {str(file)!r} is not readable JSON ({type(exc).__name__}: line "
            f"{getattr(exc, 'lineno', '?')}); fix the file",
            field="connection",
        ) from None
    if not isinstance(data, dict):
        raise ConnectionConfigError(f"connection file {str(file)!r} must hold a JSON object", field="connection")
    return data, file.resolve().parent


def parse_set_options(pairs: tuple[str, ...], option: str = "--set") -> dict[str, Any]:
    """``--set`` pairs into nested inputs, with httpie's convention: ``key=value`` is text, ``key:=json`` is JSON.

    Text is never guessed to be a number (a telephone number stays a string); dotted keys nest (``fields.name=X``).
    """
    inputs: dict[str, Any] = {}
    problems: list[InputProblem] = []
    for pair in pairs:
        key, is_json, raw = _split_pair(pair)
        if not key or any(not part for part in key.split(".")):
            shown = pair.split("=", 1)[0].split(":", 1)[0][:60] or "(no key)"  # never the value: it may be a secret
            problems.append(
                InputProblem(f"{option} {shown}", f"expected KEY=TEXT or KEY:=JSON, e.g. {option} table=account")
            )
            continue
        value: Any = raw
        if is_json:
            try:
                value = strict_json.loads(raw)
            except strict_json.StrictJsonError as exc:
                # The value is not echoed: it may be a header or a token.
                message = f"the value after := is not valid JSON ({exc}); for text write {key}=... instead"
                problems.append(InputProblem(f"{option} {key}", message))
                continue
        problem = _set_nested(inputs, key, value)
        if problem is not None:
            problems.append(problem)
    if problems:
        raise InputError(problems)
    return inputs


def _split_pair(pair: str) -> tuple[str, bool, str]:
    """(key, value is JSON, raw value); the first ``=`` separates, and ``:=`` when a colon precedes it."""
    key, sep, raw = pair.partition("=")
    if not sep:
        return "", False, raw
    if key.endswith(":"):
        return key[:-1], True, raw
    return key, False, raw


def _set_nested(inputs: dict[str, Any], key: str, value: Any) -> InputProblem | None:
    node = inputs
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return InputProblem(f"$.{key}", f"{part!r} is set both as a value and as an object")
        node = child
    node[parts[-1]] = value
    return None


def read_inputs(input_file: str | None, pairs: tuple[str, ...]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if input_file is not None:
        try:
            # Bytes, so a file that is not UTF-8 is refused by the JSON reader with its position, not a traceback.
            stdin = getattr(sys.stdin, "buffer", sys.stdin)
            text = stdin.read() if input_file == "-" else Path(input_file).read_bytes()
        except OSError as exc:
            raise InputError([InputProblem("--input", f"cannot read {input_file!r}: {exc.strerror}")]) from None
        try:
            loaded = strict_json.loads(text)
        except strict_json.StrictJsonError as exc:
            where = "--input" if exc.path == "$" else f"--input {exc.path}"
            raise InputError([InputProblem(where, f"not valid JSON: {exc.reason}")]) from None
        if not isinstance(loaded, dict):
            raise InputError([InputProblem("--input", "inputs must be a JSON object")])
        inputs.update(loaded)
    _deep_merge(inputs, parse_set_options(pairs))
    return inputs


def _deep_merge(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = value
