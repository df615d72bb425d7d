from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from tasks_server.config import describe, load
from tasks_server.errors import ConfigError


def test_defaults_without_environment(tmp_path: Path) -> None:
    settings = load({}, env_file=_empty(tmp_path))
    assert settings.port == 9420 and settings.host == "127.0.0.1"
    assert settings.sqlite_synchronous == "FULL" and settings.tasks_in_queue_limit == 1000


def test_environment_overrides_env_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# comment\nPORT=9000\nexport PATH_SQLITE='a.db'\nLOG=1\n")
    settings = load({"PORT": "9100"}, env_file=env)
    assert (settings.port, settings.path_sqlite, settings.log) == (9100, "a.db", True)


def test_flags_override_environment(tmp_path: Path) -> None:
    settings = load({"PORT": "9100"}, env_file=_empty(tmp_path), port=9200)
    assert settings.port == 9200


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("SQLITE_SYNCHRONOUS", "OFF"),
        ("LOG", "maybe"),
        ("TZ", "Mars/Olympus"),
        ("TASKS_IN_QUEUE_LIMIT", "-1"),
        ("DATABASE_URL", "mysql://db/tasks"),
        ("LEASE_MS", "50"),
        ("PG_POOL_SIZE", "1"),
        ("API_PROCESSES", "0"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({key: value}, env_file=_empty(tmp_path))
    assert info.value.key == key and key in str(info.value)


def test_database_url_selects_postgres_and_is_not_shown(tmp_path: Path) -> None:
    url = "postgresql://tasks:pw@db/tasks"
    settings = load({"DATABASE_URL": url, "LEASE_MS": "3000"}, env_file=_empty(tmp_path))
    assert settings.uses_postgres and settings.lease_ms == 3000
    assert describe(settings)["database_url"] == "***" and "pw" not in repr(settings)
    assert not load({}, env_file=_empty(tmp_path)).uses_postgres


def test_scheduled_backups_are_refused_on_postgres(tmp_path: Path) -> None:
    environ = {"DATABASE_URL": "postgresql://db/tasks", "BACKUP_INTERVAL_S": "60"}
    with pytest.raises(ConfigError, match="pg_dump"):
        load(environ, env_file=_empty(tmp_path))


def test_several_api_processes_are_refused_on_postgres(tmp_path: Path) -> None:
    environ = {"DATABASE_URL": "postgresql://db/tasks", "API_PROCESSES": "2"}
    with pytest.raises(ConfigError, match="several nodes") as info:
        load(environ, env_file=_empty(tmp_path))
    assert info.value.key == "API_PROCESSES"
    assert load({"API_PROCESSES": "2"}, env_file=_empty(tmp_path)).api_processes == 2


def test_tls_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PATH_TLS_CERT"):
        load({"PATH_TLS_CERT": "c.pem"}, env_file=_empty(tmp_path))


def test_object_storage_backups_need_credentials(tmp_path: Path) -> None:
    environ = {"BACKUP_METHOD_SQLITE": "OBJECT_STORAGE", "BACKUP_INTERVAL_S": "60"}
    with pytest.raises(ConfigError, match="BUCKET_NAME"):
        load(environ, env_file=_empty(tmp_path))


def test_missing_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load({}, env_file=tmp_path / "missing.env")


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.env"
    path.write_text("")
    return path


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("EGRESS_ALLOW", "127.0.0.1/32,not a host", "'not a host' is neither a CIDR nor a host"),
        ("EGRESS_DENY", "10.0.0.0/33", "'10.0.0.0/33' is neither a CIDR nor a host"),
        ("EGRESS_PROXIES", "proxy_1.example", "neither a CIDR nor a host name"),
        ("EGRESS_PORTS", "80,0", "'0' is not a port from 1 to 65535"),
    ],
)
def test_egress_settings_name_the_bad_entry(key: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=key) as caught:
        load({key: value}, env_file=None)
    assert reason in str(caught.value)


def test_egress_settings_are_read() -> None:
    settings = load(
        {
            "EGRESS_ALLOW": "127.0.0.1/32, intranet.example",
            "EGRESS_DENY": "*.blocked.example",
            "EGRESS_PROXIES": "proxy.internal",
            "EGRESS_PORTS": "80,443",
        },
        env_file=None,
    )
    assert settings.egress_allow == "127.0.0.1/32, intranet.example"
    assert settings.egress_ports == "80,443"
    assert load({}, env_file=None).egress_allow == ""  # the default refuses private ranges


def test_every_secret_setting_is_masked_in_describe_and_repr(tmp_path: Path) -> None:
    planted = {
        "CIPHER_KEY": "cipher-secret-value-0001",
        "DATABASE_URL": "postgresql://tasks:db-secret-value-0002@db/tasks",
        "BACKUP_OBJECT_STORAGE_ACCESS_KEY": "access-secret-value-0003",
        "BACKUP_OBJECT_STORAGE_SECRET_KEY": "bucket-secret-value-0004",
        "S3_SESSION_TOKEN": "session-secret-value-0005",
        "METRICS_KEY": "metrics-secret-value-0006-long-enough",
        "ADMIN_KEY": "admin-secret-value-0007-long-enough",
        "SMTP_PASSWORD": "smtp-secret-value-0008",
    }
    settings = load(planted, env_file=_empty(tmp_path))
    shown = json.dumps(describe(settings), default=str)
    for value in planted.values():
        assert value not in shown and value not in repr(settings)
    secrets = {f.name for f in fields(settings) if not f.repr}
    assert len(secrets) == len(planted)
    assert all(describe(settings)[name] == "***" for name in secrets)
    assert describe(settings)["port"] == settings.port  # plain settings are shown as they are
