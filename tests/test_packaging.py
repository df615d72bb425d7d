"""The package ships every file the server reads at run time.

The wheel (and so the Docker image, the nix package and the single-file build) contains
``tasks_server``'s Python modules plus the files named by ``package-data`` in
``pyproject.toml``. A migration, template or static file added without a matching pattern
works from a checkout and is missing from every installed copy; this test catches that
without building anything, with setuptools' own glob semantics (``*`` stays in one folder).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tasks_server"


def _package_data() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns: list[str] = project["tool"]["setuptools"]["package-data"]["tasks_server"]
    return patterns


def _shipped(patterns: list[str]) -> set[Path]:
    return {path for pattern in patterns for path in PACKAGE.glob(pattern) if path.is_file()}


def test_every_data_file_of_the_package_is_shipped() -> None:
    data = {
        path
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
    }
    assert data, "the package has data files (migrations, templates)"
    missing = sorted(str(path.relative_to(ROOT)) for path in data - _shipped(_package_data()))
    assert not missing, f"not matched by [tool.setuptools.package-data]: {missing}"


def test_every_package_data_pattern_matches_a_file() -> None:
    stale = [pattern for pattern in _package_data() if not _shipped([pattern])]
    assert not stale, f"package-data patterns that match nothing: {stale}"


def test_every_python_folder_is_a_package() -> None:
    # setuptools' find only takes folders with __init__.py: a module elsewhere is not shipped
    folders = {path.parent for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"folders with modules but no __init__.py: {missing}"
