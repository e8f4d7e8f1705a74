"""Packaging: the design card's top-level folders stay in the repository, and an installed wheel puts them all
under the one name ``trinity_nats`` so that they never collide with a user's own ``config.py`` or ``bus``.

- A wheel (``pip install .``, ``python -m build``): ``actors/`` is installed as ``trinity_nats.actors``,
  ``bus/`` as ``trinity_nats.bus``, ... and ``run.py`` as ``trinity_nats.run`` (the console script
  ``trinity-nats``, declared in ``pyproject.toml``; it replaces the repository's ``trinity_nats/run.py`` shim).
  While building, every absolute import of those packages is rewritten to its ``trinity_nats.`` name, as are
  string module paths (``"actors.coordinator.actor"``) that name a module of the tree. Only ``trinity_nats``
  is added to ``site-packages``.
- An editable install (``pip install -e .``, what ``make`` does): the repository as it is, top-level folders
  included, so ``python run.py`` and the tests run from the checkout unchanged.

Everything else (name, version, dependencies, extras) is in ``pyproject.toml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

ROOT = Path(__file__).resolve().parent
NS = "trinity_nats"
TOP = ("actors", "bus", "config", "crucible", "ops", "schemas", "supervisors")
_NAMES = "|".join(TOP)
_IMPORT = re.compile(rf"^(\s*)(from|import)\s+({_NAMES})(?=[\s.])", re.MULTILINE)
_STRING = re.compile(rf"""(["'])(({_NAMES})(?:\.[A-Za-z_][A-Za-z0-9_]*)+)\1""")


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def namespaced(source: str) -> str:
    """``source`` with every import of a top-level package of the tree (and every string naming one of its
    modules) moved under ``trinity_nats``."""
    out = _IMPORT.sub(lambda m: f"{m[1]}{m[2]} {NS}.{m[3]}", source)
    return _STRING.sub(lambda m: f"{m[1]}{NS}.{m[2]}{m[1]}" if _is_module(m[2]) else m[0], out)


def _namespaced_packages() -> tuple[list[str], dict[str, str]]:
    flat = find_packages(where=str(ROOT), include=[f"{t}" for t in TOP] + [f"{t}.*" for t in TOP])
    return [NS, *(f"{NS}.{p}" for p in flat)], {NS: NS, **{f"{NS}.{t}": t for t in TOP}}


class NamespacedBuildPy(build_py):
    """Builds the wheel's ``trinity_nats`` tree: rewritten imports, ``run.py`` as ``trinity_nats/run.py``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        build = Path(self.build_lib) / NS
        for path in build.rglob("*.py"):
            path.write_text(namespaced(path.read_text()))
        (build / "run.py").write_text(namespaced((ROOT / "run.py").read_text()))


class FlatEditableWheel(editable_wheel):
    """An editable install maps the repository as it is (its top-level folders and ``run.py``)."""

    def run(self) -> None:
        dist = self.distribution
        dist.packages = find_packages(where=str(ROOT), include=[NS, *TOP] + [f"{t}.*" for t in TOP])
        dist.package_dir = {}
        dist.py_modules = ["run"]
        super().run()


packages, package_dir = _namespaced_packages()
options: dict[str, Any] = {
    "packages": packages,
    "package_dir": package_dir,
    "cmdclass": {"build_py": NamespacedBuildPy, "editable_wheel": FlatEditableWheel},
}
setup(**options)
