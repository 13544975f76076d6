"""The contract check, remembered: once per distinct digest in a process, and across processes on disk.

Checking every schema against the 2020-12 metaschema costs about a second; a CLI call or a platform worker should pay
it once per release, not per process. The digest covers everything the check reads (manifest, its merge problems,
every schema, every hook with its spec and implementers), so a changed pack is a new digest and is checked again.

On disk (``D365_CACHE_DIR``, default ``~/.cache/d365-connector``; empty turns it off) a clean result is an empty
``contract-<digest>.ok``; a result where only packs are at fault is ``contract-<digest>.packs.json`` (their problems
by pack), so a broken pack left installed costs its warning, not a check, on every start. A broken built-in contract
is never remembered: it must be fixed, and it stops the runtime anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from connector import contract
from connector.plugins import BUILTIN
from connector.version import __version__

if TYPE_CHECKING:
    from connector.runtime import Runtime

#: Where contract checks are remembered by digest; set to an empty string to check on every start.
CACHE_DIR_ENV = "D365_CACHE_DIR"

log = logging.getLogger("connector.runtime")
_checked_digests: dict[str, dict[str, list[str]]] = {}
_check_lock = threading.Lock()


def contract_digest(runtime: Runtime) -> str:
    """A hash of everything the contract check reads: manifest, every schema, every hook and who implements it."""
    hooks = []
    for name, caller in sorted(vars(runtime.pm.hook).items()):
        if name.startswith("_"):
            continue
        spec = caller.spec.argnames if caller.spec is not None else None
        impls = sorted((i.plugin_name, i.wrapper or i.hookwrapper) for i in caller.get_hookimpls())
        hooks.append((name, spec, impls))
    material = {
        "version": __version__,
        "manifest": runtime.manifest.document,
        "problems": runtime.manifest.problems,
        "schemas": {sid: runtime.store.get(sid) for sid in runtime.store.ids()},
        "hooks": hooks,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def remembered_contract_problems(runtime: Runtime) -> dict[str, list[str]]:
    """:func:`connector.contract.contract_problems` by owner, computed once per digest."""
    key = contract_digest(runtime)
    with _check_lock:
        found = _checked_digests.get(key)
        if found is None:
            cache_dir = _cache_dir()
            found = _read(cache_dir, key) if cache_dir is not None else None
            if found is None:
                found = contract.contract_problems(runtime)
                if cache_dir is not None and BUILTIN not in found:
                    _write(cache_dir, key, found)
            _checked_digests[key] = found
    return {owner: list(problems) for owner, problems in found.items()}


def _cache_dir() -> Path | None:
    """``D365_CACHE_DIR``, else the per-user cache; None when the variable is set empty."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured == "":
        return None
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "d365-connector"


def _read(cache_dir: Path, key: str) -> dict[str, list[str]] | None:
    if (cache_dir / f"contract-{key}.ok").is_file():
        return {}
    try:
        found = json.loads((cache_dir / f"contract-{key}.packs.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    valid = isinstance(found, dict) and all(isinstance(v, list) for v in found.values()) and BUILTIN not in found
    return {str(k): [str(p) for p in v] for k, v in found.items()} if valid else None


def _write(cache_dir: Path, key: str, found: dict[str, list[str]]) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if found:
            (cache_dir / f"contract-{key}.packs.json").write_text(json.dumps(found), encoding="utf-8")
        else:
            (cache_dir / f"contract-{key}.ok").touch()
    except OSError:  # a read-only home must not stop the connector; the check simply runs again next time
        log.debug("cannot remember the contract check in %s", cache_dir)
