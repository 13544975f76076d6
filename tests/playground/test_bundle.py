"""The committed bundle (connector/playground/) is what ``make assets`` builds from playground/'s lock file.

The wheel ships the built files, so installing or running needs no network and no Node; this rebuilds them in a
scratch copy (``npm ci`` from package-lock.json, then esbuild through build.mjs) and compares byte for byte, so a
source change without a rebuild, or a hand edit of the bundle, fails here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "playground"
BUILT = ROOT / "connector" / "playground"


def test_the_committed_bundle_is_rebuilt_byte_for_byte(tmp_path: Path) -> None:
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm and node, "node and npm are needed to rebuild the playground bundle"
    work = tmp_path / "playground"
    work.mkdir()
    for name in ("package.json", "package-lock.json", "build.mjs"):
        shutil.copy2(SOURCE / name, work / name)
    shutil.copytree(SOURCE / "src", work / "src")
    install = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=work, capture_output=True, text=True,
                             timeout=900)  # fmt: skip
    assert install.returncode == 0, f"npm ci failed:\n{install.stdout}\n{install.stderr}"
    out = tmp_path / "out"
    build = subprocess.run([node, "build.mjs", str(out)], cwd=work, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"the build failed:\n{build.stdout}\n{build.stderr}"
    rebuilt = sorted(p.name for p in out.iterdir())
    assert rebuilt == sorted(p.name for p in BUILT.iterdir()) == ["app.css", "app.js", "index.html"]
    stale = [name for name in rebuilt if (out / name).read_bytes() != (BUILT / name).read_bytes()]
    assert stale == [], f"connector/playground/{stale} differ from a fresh build: run `make assets` and commit"
