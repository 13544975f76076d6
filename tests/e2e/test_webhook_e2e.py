"""``d365 webhook serve --subscribe`` against the emulator, with contacts changed through the record actions.

The receiver runs as a real process (``python -m connector.cli``); the emulator registers its steps, delivers real
RemoteExecutionContexts to it, and says through its drain call when every delivery is done, so the test reads the
event lines without sleeping. Exit must leave no endpoint or step behind, and a subscribe killed halfway must be
finished, not duplicated, by the next one.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from connector import webhook_registration
from connector.connection import Connection
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle
from tests.conftest import SENTINELS, assert_no_secrets

KEY = SENTINELS["webhook_key"]
CONFIG = {
    "table": "contact",
    "messages": ["Create", "Update", "Delete"],
    "secret": {"env": "D365_TEST_WEBHOOK_KEY"},
    "filtering_attributes": ["firstname", "lastname"],
    "pre_image": True,
    "post_image": ["fullname", "firstname", "lastname"],
}
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lines:
    """Lines of a child's pipe on a queue, so waiting for one has a deadline instead of hanging the suite."""

    def __init__(self, pipe: IO[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.pipe = pipe
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self.pipe:
            self.queue.put(line)

    def close(self) -> None:
        """After the child exited: the pump reaches end of file, then the pipe can be closed."""
        self.thread.join(30)
        self.pipe.close()

    def next(self) -> dict[str, Any]:
        line = self.queue.get(timeout=60)
        self.seen.append(line)
        return dict(json.loads(line))

    def pending(self) -> list[str]:
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        self.seen += out
        return out


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.json"
    path.write_text(json.dumps(CONFIG), encoding="utf-8")
    return path


@pytest.fixture
def serve(connection_file: Path, config_file: Path) -> Iterator[Any]:
    port = free_port()
    procs: list[tuple[subprocess.Popen[str], Lines, Lines]] = []

    def start() -> tuple[subprocess.Popen[str], Lines, Lines]:
        env = {**os.environ, "D365_TEST_WEBHOOK_KEY": KEY}
        cmd = [sys.executable, "-m", "connector.cli", "webhook", "serve", "--connection", str(connection_file),
               "--config", str(config_file), "--port", str(port), "--subscribe"]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stderr is not None
        procs.append((proc, Lines(proc.stdout), Lines(proc.stderr)))
        return procs[-1]

    start.port = port  # type: ignore[attr-defined]
    yield start
    for proc, out, err in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        out.close()
        err.close()


def stop(proc: subprocess.Popen[str], err: Lines) -> dict[str, Any]:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    lines = [json.loads(line) for line in err.pending() if line.startswith("{")]
    assert_no_secrets(*err.seen)
    return next(line["unsubscribed"] for line in lines if "unsubscribed" in line)


def registrations(connection: Connection) -> tuple[list[Any], list[Any], list[Any]]:
    get = connection.client.get_json
    return (
        get("serviceendpoints?$select=name")["value"],
        get("sdkmessageprocessingsteps?$select=name")["value"],
        get("sdkmessageprocessingstepimages?$select=name")["value"],
    )


def test_webhook_serve_subscribe_end_to_end(
    fresh_emulator: EmulatorHandle,
    runtime: Runtime,
    connection: Connection,
    serve: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A subscribe that dies after creating the endpoint, as a killed process would: no rollback runs. (One receiver
    # process serves both checks: its start-up is most of this test's time.)
    def killed(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setenv("D365_TEST_WEBHOOK_KEY", KEY)
        patch.setattr(webhook_registration, "_ensure_step", killed)
        with pytest.raises(KeyboardInterrupt):
            runtime.subscribe_trigger("webhook", CONFIG, connection, f"http://127.0.0.1:{serve.port}/")
    endpoints, steps, _ = registrations(connection)
    assert len(endpoints) == 1 and steps == []

    proc, out, err = serve()
    assert "listening" in err.next()
    subscription = err.next()["subscribed"]
    assert len(subscription["steps"]) == 3
    endpoints, steps, images = registrations(connection)
    assert len(endpoints) == 1, "the second subscribe finished the killed one's endpoint instead of adding one"
    assert (
        subscription["serviceendpoint_id"]
        == connection.client.get_json("serviceendpoints?$select=serviceendpointid")["value"][0]["serviceendpointid"]
    )
    assert len(steps) == 3
    assert len(images) == 4, "Create: post; Update: pre and post; Delete: pre"
    drain = fresh_emulator.admin.drain_webhooks

    created = runtime.run_action(
        "create_entity", {"table": "contact", "fields": {"firstname": "Ada", "lastname": "Lovelace"}}, connection
    )
    rid = created["id"]
    drain()
    create = out.next()
    assert (create["message"], create["table"], create["record_id"]) == ("Create", "contact", rid)
    assert create["changed_attributes"]["firstname"] == "Ada"
    assert create["pre_images"] == {}, "no pre-image on Create"
    assert create["post_images"]["PostImage"] == {
        "fullname": "Ada Lovelace",
        "firstname": "Ada",
        "lastname": "Lovelace",
    }
    assert create["post_images"]["AsynchronousStepPrimaryName"] == {"fullname": "Ada Lovelace", "contactid": rid}
    assert (create["stage"], create["mode"], create["depth"]) == (40, "asynchronous", 1)
    assert create["step_id"] in {s["step_id"] for s in subscription["steps"]}

    runtime.run_action("update_entity", {"table": "contact", "id": rid, "fields": {"firstname": "Augusta"}}, connection)
    drain()
    update = out.next()
    assert update["message"] == "Update" and update["record_id"] == rid
    assert update["changed_attributes"]["firstname"] == "Augusta"
    assert "jobtitle" not in update["changed_attributes"]
    assert update["pre_images"]["PreImage"]["firstname"] == "Ada"
    assert update["post_images"]["PostImage"]["fullname"] == "Augusta Lovelace"

    runtime.run_action("update_entity", {"table": "contact", "id": rid, "fields": {"jobtitle": "Analyst"}}, connection)
    deliveries = drain()
    assert [d["message"] for d in deliveries] == ["Create", "Update"], "an unfiltered column delivers nothing"

    runtime.run_action("delete_entity", {"table": "contact", "id": rid}, connection)
    drain()
    delete = out.next()
    assert delete["message"] == "Delete" and delete["record_id"] == rid
    assert delete["changed_attributes"] == {}
    assert delete["post_images"] == {}, "no post-image on Delete"
    assert delete["pre_images"]["PreImage"]["jobtitle"] == "Analyst"
    assert out.pending() == []

    removed = stop(proc, err)
    assert removed["serviceendpoint_id"] == subscription["serviceendpoint_id"]
    assert registrations(connection) == ([], [], [])
    assert_no_secrets(*out.seen)
