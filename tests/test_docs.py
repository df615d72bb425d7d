"""The README's configuration table names every environment variable the code reads."""

from __future__ import annotations

from pathlib import Path

from tasks_server.config import CLIENT_ENV_VARIABLES, ENV_VARIABLES

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_environment_variable_is_documented() -> None:
    text = README.read_text()
    missing = [name for name in (*ENV_VARIABLES, *CLIENT_ENV_VARIABLES) if f"`{name}`" not in text]
    assert missing == []
