"""Fault injection (``--fault-rate`` with ``--seed``): every fault kind occurs, the same seed gives the same faults for
the same requests, a "commit, then drop" write really happened while a plain drop did not, and the request log says
which fault each request got."""

from __future__ import annotations

import httpx

from dataverse_emulator.testing import EmulatorHandle, running_emulator


def outcome(r: httpx.Response | None) -> str:
    if r is None:
        return "no answer"
    if r.status_code == 503:
        return f"503 retry-after={r.headers.get('Retry-After')}"
    return str(r.status_code)


def run_sequence(h: EmulatorHandle, n: int = 40) -> tuple[list[str], list[str | None], list[bool]]:
    """POST n accounts, one connection each; returns outcomes, logged faults and whether each row exists."""
    headers = {"Authorization": f"Bearer {h.token()}", "Connection": "close"}  # a dropped connection is never reused
    outcomes = []
    with httpx.Client(headers=headers, timeout=30, trust_env=False) as client:
        for i in range(n):
            try:
                r: httpx.Response | None = client.post(f"{h.api_url}/accounts", json={"name": f"fault-{i:02d}"})
            except httpx.TransportError:
                r = None
            outcomes.append(outcome(r))
    log = [e for e in h.admin.requests() if e["path"].endswith("/accounts")]
    assert len(log) == n
    store = h.emulator.store
    exists = [bool(store.query("SELECT 1 FROM account WHERE name = ?", [f"fault-{i:02d}"])) for i in range(n)]
    return outcomes, [e.get("fault") for e in log], exists


def test_same_seed_same_faults_and_commit_then_drop_commits() -> None:
    with running_emulator(fault_rate=0.6, seed=5) as h:
        outcomes, faults, exists = run_sequence(h)
    assert set(faults) == {None, "503_retry_after", "503", "502", "drop", "commit_then_drop"}
    expected = {
        None: ("204", True),
        "503_retry_after": ("503 retry-after=2", False),
        "503": ("503 retry-after=None", False),
        "502": ("502", False),
        "drop": ("no answer", False),
        "commit_then_drop": ("no answer", True),  # the write happened; the client never heard
    }
    assert [(o, e) for o, e in zip(outcomes, exists, strict=True)] == [expected[f] for f in faults]
    with running_emulator(fault_rate=0.6, seed=5) as again:
        assert run_sequence(again) == (outcomes, faults, exists)
    with running_emulator(fault_rate=0.6, seed=6) as other:
        assert run_sequence(other)[1] != faults


def test_admin_and_token_endpoints_are_never_faulted() -> None:
    with running_emulator(fault_rate=1.0, seed=1) as h:
        cfg = h.connection_config()
        form = {
            "grant_type": "client_credentials",
            "client_id": cfg["client_id"],
            "client_secret": cfg["client_secret"],
            "scope": f"{h.base_url}/.default",
        }
        assert all(httpx.post(cfg["token_url"], data=form).status_code == 200 for _ in range(5))
        assert h.admin.requests() is not None
