"""The CLI's database commands with DATABASE_URL set: migrate applies the PostgreSQL
migrations; backup and restore point to PostgreSQL's own tools and change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks_server.cli.main import main
from tasks_server.store.postgres.migrate import migrations


@pytest.fixture
def postgres_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("DATABASE_URL", database_url)
    return tmp_path


def test_migrate_applies_the_postgres_migrations_once(
    postgres_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate"]) == 0
    applied = f"PostgreSQL: {len(migrations())} migration(s) applied"
    assert applied in capsys.readouterr().out
    assert main(["migrate"]) == 0
    assert "PostgreSQL: 0 migration(s) applied" in capsys.readouterr().out
    assert not (postgres_env / ".database").exists()  # no SQLite file made on the side


@pytest.mark.parametrize("command", [["backup"], ["restore", "latest"]])
def test_backup_and_restore_point_to_postgres_tools(
    postgres_env: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "PostgreSQL" in err and "pg_dump" in err and "point-in-time" in err
    assert not (postgres_env / ".database").exists()
