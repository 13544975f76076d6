"""Browser tests of the playground: Playwright (pip) driving Debian's chromium against ``d365 serve`` and the emulator.

The server is the real command (``d365 serve`` in a subprocess, port 0, under its default ``hosted`` policy) with
two connections: ``emu`` (client credentials) and ``user`` (authorization code, signed in through the page's
"Connect" button against the emulator's identity endpoints), and a webhook receiver for ``emu``. Chromium comes from
Debian (installed here with apt-get when missing); no browser is ever downloaded by Playwright. Each test signs in
through /login in its own browser context, so tests stay independent under xdist. Screenshots go to a pytest tmp
folder (one per step, kept as the test's artefact); ``PLAYGROUND_SCREENSHOTS=DIR`` puts them in DIR instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dataverse_emulator.testing import EmulatorHandle, running_emulator

CHROMIUM = "/usr/bin/chromium"
API_TOKEN = "playground-test-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}
WEBHOOK_KEY = "playground-webhook-key-0123456789"
UNSUPPORTED = ".unsupported-field"  # rjsf's UnsupportedField marker (its "Unsupported field schema" block)


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (machines run as root); never a Playwright download."""
    with open(Path(tempfile.gettempdir()) / "d365-playground-chromium.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one apt-get at a time across xdist workers
        return _install_chromium()


def _install_chromium() -> str:
    if not Path(CHROMIUM).exists():
        apt = shutil.which("apt-get")
        assert apt, f"{CHROMIUM} is missing and apt-get is not available to install it"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for args in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "chromium"]):
            done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
            assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert Path(CHROMIUM).exists()
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Per module, not per session: Playwright's sync API keeps an asyncio loop running on this thread while it is
    started, so tests that call ``asyncio.run`` after ours on the same xdist worker need it stopped."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator() as handle:
        yield handle


@pytest.fixture(scope="module")
def serve(emulator: EmulatorHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``d365 serve`` on 127.0.0.1, port 0; yields its base URL (read from the line it prints once listening)."""
    folder = tmp_path_factory.mktemp("serve")
    emu, user, hook = folder / "emu.json", folder / "user.json", folder / "webhook.json"
    emu.write_text(json.dumps(emulator.connection_config()))
    user.write_text(json.dumps(emulator.connection_config("authorization_code")))
    hook.write_text(json.dumps({"table": "contact", "secret": WEBHOOK_KEY}))
    command = [
        sys.executable, "-m", "connector.cli", "serve", "--port", "0", "--token-dir", str(folder / "tokens"),
        "--connection", f"emu={emu}", "--connection", f"user={user}", "--webhook", f"emu={hook}",
    ]  # fmt: skip
    env = {**os.environ, "D365_SERVE_TOKEN": API_TOKEN}
    env.pop("D365_POLICY", None)  # the server's own default: hosted
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stderr is not None
        seen = []
        for line in server.stderr:
            seen.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if found:
                break
        else:
            raise AssertionError(f"d365 serve stopped before listening:\n{''.join(seen)}")
        # keep reading, so the server never blocks on a full pipe; what it printed helps when a test fails
        drain = threading.Thread(target=seen.extend, args=(server.stderr,), daemon=True)
        drain.start()
        yield found.group(1)
    finally:
        server.terminate()
        server.wait(30)
        if server.stderr is not None:
            server.stderr.close()


@pytest.fixture
def api(serve: str) -> Iterator[httpx.Client]:
    """The server's API with the bearer token, for set-up and for checking what the page did."""
    with httpx.Client(base_url=serve, headers=BEARER, timeout=60) as client:
        yield client


@pytest.fixture
def shots(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    chosen = os.environ.get("PLAYGROUND_SCREENSHOTS")
    folder = Path(chosen) / request.node.name if chosen else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Playground:
    """One signed-in page; ``shot`` saves a numbered screenshot per step and fails on rjsf's unsupported marker."""

    def __init__(self, page: Any, base: str, folder: Path) -> None:
        self.page, self.base, self.folder, self.step = page, base, folder, 0

    def sign_in(self) -> None:
        self.page.goto(f"{self.base}/login")
        self.page.fill("input[name=token]", API_TOKEN)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(re.compile(r"/playground/"))
        self.page.wait_for_selector("#action-select option", state="attached")

    def choose(self, action_id: str) -> None:
        self.page.select_option("#action-select", action_id)
        self.page.wait_for_selector(f"#action h2:text-is('{self.title(action_id)}')")

    def title(self, action_id: str) -> str:
        return str(self.page.eval_on_selector(f"#action-select option[value='{action_id}']", "o => o.textContent"))[
            : -len(f" ({action_id})")
        ]

    def shot(self, name: str) -> Path:
        self.step += 1
        path = self.folder / f"{self.step:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert self.page.locator(UNSUPPORTED).count() == 0, f"rjsf could not render a field ({name}); see {path}"
        return path


@pytest.fixture
def playground(browser: Any, serve: str, shots: Path) -> Iterator[Playground]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        view = Playground(page, serve, shots)
        view.sign_in()
        yield view
        assert errors == [], f"the page threw: {errors}"
    finally:
        page.screenshot(path=str(shots / "last.png"), full_page=True)  # where a failed step stopped
        context.close()
