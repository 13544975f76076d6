"""Suite-wide guards: sentinel secrets must never leak, and every action must run and be refused at least once.

Tests that need a secret use the values in :data:`SENTINELS`. After every test, its captured stdout, stderr, log
records (DEBUG and up) and failure text are searched for them, and the test fails if one appears. At the end of a full
run the controller reads the run ledger (every ``run_action`` appends to it) and fails the session unless every
built-in action ran successfully and was refused with an input error, and the cassettes hold no sentinel.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

SENTINELS = {
    "client_secret": "SENTINEL-client-secret-5b1d9c",
    "access_token": "SENTINEL-access-token-77e2f0",
    "refresh_token": "SENTINEL-refresh-token-c41a88",
    "webhook_key": "SENTINEL-webhook-key-093bd1",
    "private_key_password": "SENTINEL-key-password-6f0e42",
}


@pytest.fixture(autouse=True)
def _local_operator_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite is the operator of its own machine (its keys, certificates and token stores live in tmp folders);
    the ``hosted`` preset is tested with explicit policies in tests/connector/test_policy.py."""
    monkeypatch.setenv("D365_POLICY", "local")


@pytest.fixture(autouse=True)
def _private_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """``d365 webhook serve`` remembers deliveries under ``$XDG_STATE_HOME`` by default: each test gets its own, so
    no test writes to the home folder or sees another test's deliveries as replays."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


def find_sentinels(text: str) -> list[str]:
    """Names of the sentinel secrets that occur in ``text``."""
    return [name for name, value in SENTINELS.items() if value in text]


def assert_no_secrets(*texts: Any) -> None:
    """Fail when any sentinel secret occurs in the given texts (CLI output, reprs, error messages)."""
    for text in texts:
        leaked = find_sentinels(str(text))
        assert not leaked, f"sentinel secret(s) {leaked} leaked into: {str(text)[:300]}"


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # xdist workers inherit the controller's environment
    ledger = Path(tempfile.mkdtemp(prefix="d365-ledger-")) / "runs.jsonl"
    ledger.touch()
    os.environ["D365_RUN_LEDGER"] = str(ledger)
    os.environ["D365_DEBUG"] = "1"
    # Clean contract checks are remembered here for the run (and by every d365 subprocess), not in the user's cache.
    os.environ["D365_CACHE_DIR"] = str(ledger.parent / "cache")
    config.stash[_LEDGER_KEY] = ledger


_LEDGER_KEY = pytest.StashKey[Path]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    texts = [content for _, content in report.sections]
    if report.longrepr is not None:
        texts.append(str(report.longrepr))
    leaked = sorted({name for text in texts for name in find_sentinels(text)})
    if leaked and report.outcome != "skipped":
        report.outcome = "failed"
        report.longrepr = f"sentinel secret(s) {leaked} appeared in captured output, logs or the failure text"
    return report


def _full_run(config: pytest.Config) -> bool:
    opt = config.option
    if getattr(opt, "keyword", "") or getattr(opt, "markexpr", "") or getattr(opt, "lf", False):
        return False
    args = [Path(a).resolve() for a in config.args]
    return not args or args == [ROOT / "tests"] or args == [ROOT]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput") or _LEDGER_KEY not in config.stash or not _full_run(config):
        return
    problems: list[str] = []
    for cassette in sorted((ROOT / "tests" / "cassettes").rglob("*.yaml")):
        leaked = find_sentinels(cassette.read_text(encoding="utf-8"))
        if leaked:
            problems.append(f"cassette {cassette.relative_to(ROOT)} holds sentinel secret(s) {leaked}")
    if exitstatus == 0:
        from connector.contract import check_contract
        from connector.runtime import Runtime

        ledger = config.stash[_LEDGER_KEY]
        runs = [json.loads(line) for line in ledger.read_text(encoding="utf-8").splitlines() if line.strip()]
        problems += check_contract(Runtime(load_entrypoints=False), repo_checks=True, ledger=runs)
    if problems:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.section("contract check after the suite", sep="=", red=True)
            for problem in problems:
                reporter.line(f"- {problem}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
