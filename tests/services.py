"""Real Redis and PostgreSQL servers for the scale-out tests, from Debian's packages.

Why real servers and not fakes: the shared governor's guarantees live in Redis (Lua scripts, ``TIME``, key expiry)
and the partitioned sync's in PostgreSQL's locking; a fake would test the fake. A missing server is installed with
``apt-get`` (``apt-get update`` once per process), as root or through ``sudo -n``; CI runs on a clean Debian machine
where ``make test`` does exactly this. Each server listens on 127.0.0.1 on a free port, keeps its data in a temporary
folder, and is stopped (by its own process id) when the test session ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_updated = False


def _sudo() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo", "-n"]
    raise RuntimeError("test servers need root or passwordless sudo: apt-get install redis-server postgresql")


def apt_install(*packages: str) -> None:
    """``apt-get install -y`` the packages (once ``apt-get update`` has run in this process)."""
    global _updated
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _updated:
        subprocess.run([*_sudo(), "apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        _updated = True
    subprocess.run([*_sudo(), "apt-get", "install", "-y", "-qq", *packages], check=True, env=env, capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A ``redis-server`` with no persistence on a free port; yields its ``redis://`` URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        apt_install("redis-server")
    port = free_port()
    folder = tempfile.mkdtemp(prefix="d365-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        apt_install("postgresql")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("apt-get install postgresql left no /usr/lib/postgresql/*/bin/initdb")
    return Path(found[-1]).parent


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster in a temporary folder on a free port, run as the ``postgres`` user when this process is
    root (PostgreSQL refuses root); yields a ``postgresql+psycopg://`` URL with trust authentication on loopback."""
    bindir = _pg_bin()
    folder = Path(tempfile.mkdtemp(prefix="d365-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=off"
    proc = subprocess.Popen(
        [*as_user, str(bindir / "postgres"), "-D", str(data), *options.split()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc, "postgres")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        _stop(proc)
        shutil.rmtree(folder, ignore_errors=True)
