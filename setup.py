"""Copies ``manifest.json`` and ``schemas/`` into ``connector/_data`` of the wheel.

They live at the repository root where builders and reviewers expect them; ``connector.schemas.data_root`` reads the
packaged copy when it exists and the checkout otherwise. Everything else is declared in ``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "connector" / "_data"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        shutil.copy2(ROOT / "manifest.json", target / "manifest.json")
        shutil.copytree(ROOT / "schemas", target / "schemas")


setup(cmdclass={"build_py": BuildPyWithData})
