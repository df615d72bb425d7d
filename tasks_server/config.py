"""Settings: read once from the environment and a ``.env`` file, cast and validated.

This is the only module that reads ``os.environ``. Variable names follow the original
Tasks Server where it had one (docs/compatibility.md#configuration).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the server, with the environment variable that sets it."""

    host: str = "127.0.0.1"  # HOST
    port: int = 9420  # PORT
    # API_PROCESSES: processes serving the one socket (SQLite; one of them runs the engine)
    api_processes: int = 1
    path_sqlite: str = ".database/tasks.db"  # PATH_SQLITE
    # DATABASE_URL=postgresql://…: several nodes share that database instead of a file
    database_url: str | None = field(default=None, repr=False)
    lease_ms: int = 10_000  # LEASE_MS: a claim's lease on PostgreSQL, renewed in flight
    pg_pool_size: int = 10  # PG_POOL_SIZE: connections per node (two more of its own)
    sqlite_synchronous: str = "FULL"  # SQLITE_SYNCHRONOUS: FULL survives power loss
    # SQLITE_BUSY_TIMEOUT_MS: how long a write waits for a lock another process holds
    sqlite_busy_timeout_ms: int = 30_000
    cipher_key: str = field(default="", repr=False)  # CIPHER_KEY: encrypts task secrets
    tz: str = "UTC"  # TZ: zone of date strings without an offset
    log: bool = False  # LOG=1: one line per attempt
    log_format: str = "plain"  # LOG_FORMAT: plain | json
    log_level: str = "INFO"  # LOG_LEVEL
    max_size_body_request: int = 32_768  # MAX_SIZE_BODY_REQUEST (bytes)
    max_size_data_response: int = 32_768  # MAX_SIZE_DATA_RESPONSE (bytes)
    max_throttle_request: int = 0  # MAX_THROTTLE_REQUEST (0 with window 0 = off)
    max_throttle_time_window: int = 0  # MAX_THROTTLE_TIME_WINDOW (ms)
    tasks_in_queue_limit: int = 1000  # TASKS_IN_QUEUE_LIMIT (0 = unlimited)
    cert_dir: str | None = None  # CERT_DIR: cert/key paths are accepted only inside it
    path_tls_cert: str | None = None  # PATH_TLS_CERT: HTTPS for the listener
    path_tls_key: str | None = None  # PATH_TLS_KEY
    path_tls_ca: str | None = None  # PATH_TLS_CA
    horizon_ms: int = 60_000  # SCHEDULER_HORIZON_MS: near future kept in memory
    lookahead_ms: int = 250  # SCHEDULER_LOOKAHEAD_MS: claim this early, send on time
    max_in_flight: int = 1000  # MAX_IN_FLIGHT: concurrent outgoing calls
    max_host_connections: int = 256  # MAX_HOST_CONNECTIONS: per target host (0 = no cap)
    max_host_wait_s: float = 300.0  # MAX_HOST_WAIT_S: longest wait for a slot to a host
    # destination backpressure (dispatch/hosts.py): the ceiling of each host's adaptive
    # concurrency limit (an admin may override it per host; MAX_HOST_CONNECTIONS still caps
    # it), calls started per second per host (0 = no rate limit), and the circuit
    host_max_concurrency: int = 256  # HOST_MAX_CONCURRENCY
    host_max_rate: float = 0.0  # HOST_MAX_RATE: calls/s per host (0 = none)
    host_circuit_failures: int = 5  # HOST_CIRCUIT_FAILURES: opens after N (0 = never)
    host_circuit_cooldown_s: float = 30.0  # HOST_CIRCUIT_COOLDOWN_S: then one probe call
    shutdown_grace_s: float = 10.0  # SHUTDOWN_GRACE_S: wait for in-flight calls on stop
    retry_after_max_s: int = 3600  # RETRY_AFTER_MAX_S: cap on a target's Retry-After
    dedup_window_s: int = 86_400  # DEDUP_WINDOW_S: how long a deduplication id holds
    max_batch_items: int = 1000  # MAX_BATCH_ITEMS: registrations per batch request
    max_size_body_batch: int = 8 * 1024 * 1024  # MAX_SIZE_BODY_BATCH (bytes)
    backup_method: str = "LOCAL"  # BACKUP_METHOD_SQLITE: LOCAL | OBJECT_STORAGE
    backup_dir: str | None = None  # BACKUP_PATH_DIR_SQLITE (unset: no scheduled backups)
    backup_cron: str | None = None  # BACKUP_CRON_PATTERN_SQLITE
    backup_cron_tz: str | None = None  # BACKUP_CRON_TZ_SQLITE (default TZ)
    backup_interval_s: int = 0  # BACKUP_INTERVAL_S: alternative to the cron pattern
    backup_keep_last: int = 0  # BACKUP_KEEP_LAST (0 = keep all)
    backup_keep_days: int = 0  # BACKUP_KEEP_DAYS (0 = keep all)
    s3_endpoint: str | None = None  # BACKUP_OBJECT_STORAGE_ENDPOINT
    s3_access_key: str | None = field(default=None, repr=False)  # ..._ACCESS_KEY
    s3_secret_key: str | None = field(default=None, repr=False)  # ..._SECRET_KEY
    s3_bucket: str | None = None  # BACKUP_OBJECT_STORAGE_BUCKET_NAME
    s3_path: str = ""  # BACKUP_OBJECT_STORAGE_PATH (key prefix)
    s3_region: str | None = None  # S3_REGION or AWS_REGION
    s3_session_token: str | None = field(default=None, repr=False)  # S3_/AWS_SESSION_TOKEN
    s3_path_style: bool = True  # BACKUP_OBJECT_STORAGE_PATH_STYLE
    # BACKUP_OBJECT_STORAGE_MULTIPART_THRESHOLD: bigger uploads go in parts of this size
    s3_multipart_threshold_bytes: int = 8 * 1024 * 1024
    metrics_key: str | None = field(default=None, repr=False)  # METRICS_KEY: bearer for /metrics
    metrics_public: bool = False  # METRICS_PUBLIC=1: /metrics without a key
    admin_key: str | None = field(default=None, repr=False)  # ADMIN_KEY: enables /v1/admin/*
    public_url: str | None = None  # PUBLIC_URL: base of links in alerts (default: HOST:PORT)
    smtp_host: str | None = None  # SMTP_HOST: alert e-mail goes through it (unset: none)
    smtp_port: int = 587  # SMTP_PORT
    smtp_user: str | None = None  # SMTP_USER
    smtp_password: str | None = field(default=None, repr=False)  # SMTP_PASSWORD
    smtp_from: str = "tasks-server@localhost"  # SMTP_FROM
    smtp_tls: str = "starttls"  # SMTP_TLS: none | starttls | tls
    smtp_ca_file: str | None = None  # SMTP_CA_FILE: CA bundle to trust (default: system's)
    alerts_max_per_hour: int = 30  # ALERTS_MAX_PER_HOUR: per owner; more are suppressed
    alert_digest_interval_s: int = 3600  # ALERT_DIGEST_INTERVAL_S: repeats, at most this often
    http_header_timeout_s: float = 10.0  # HTTP_HEADER_TIMEOUT_S: to send a request head
    http_body_timeout_s: float = 30.0  # HTTP_BODY_TIMEOUT_S: longest gap in a request body
    http_keep_alive_s: float = 5.0  # HTTP_KEEP_ALIVE_S: idle keep-alive connections close
    max_connections: int = 0  # MAX_CONNECTIONS: open client connections (0: fit the fd limit)
    max_response_headers_bytes: int = 16_384  # MAX_RESPONSE_HEADERS_BYTES per attempt
    attempts_kept: int = 20  # ATTEMPTS_KEPT: per task, the first and the last N (0 = all)
    retention_finished_days: int = 0  # RETENTION_FINISHED_DAYS: delete older (0 = keep)
    auth_failures_per_minute: int = 60  # AUTH_FAILURES_PER_MINUTE: per address, per owner
    request_budget: int = 0  # REQUEST_BUDGET: API requests per minute per owner (0 = none)
    owner_registration: str | None = None  # OWNER_REGISTRATION: see registration_mode
    # EGRESS_ALLOW: CIDRs and host names calls may reach although private or loopback
    egress_allow: str = ""
    egress_deny: str = ""  # EGRESS_DENY: CIDRs and host names always refused
    egress_proxies: str = ""  # EGRESS_PROXIES: the only proxies a task may name
    egress_ports: str = ""  # EGRESS_PORTS: the only destination ports (empty: any)
    dashboard: bool = True  # DASHBOARD=0 switches the web dashboard at /ui off
    # DASHBOARD_SESSION_S: how long a dashboard sign-in lasts
    dashboard_session_s: int = 8 * 3600
    # SIGNING_OVERLAP_S: after a rotation the old signing secret still signs this long
    signing_overlap_s: int = 86_400

    @property
    def database_path(self) -> Path:
        return Path(self.path_sqlite)

    @property
    def uses_postgres(self) -> bool:
        return self.database_url is not None

    @property
    def backup_is_scheduled(self) -> bool:
        return bool(self.backup_cron or self.backup_interval_s)

    @property
    def registration_mode(self) -> str:
        """Who may call ``POST /v1/owners/register``: ``open`` (anyone, as the original),
        ``admin`` (only with the ADMIN_KEY bearer) or ``closed`` (nobody; owners are made
        with the admin API)."""
        if self.owner_registration:
            return self.owner_registration
        return "admin" if self.admin_key else "open"

    @property
    def throttle_enabled(self) -> bool:
        return self.max_throttle_request > 0 and self.max_throttle_time_window > 0


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        value = int(raw.strip())
        if value < minimum or (maximum is not None and value > maximum):
            high = "" if maximum is None else f" and at most {maximum}"
            raise ValueError(f"must be at least {minimum}{high}")
        return value

    return cast


def _float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _choice(*allowed: str) -> Callable[[str], str]:
    def cast(raw: str) -> str:
        value = raw.strip().upper() if allowed[0].isupper() else raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return cast


def _zone(raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("is not an IANA time zone") from exc
    return raw


def _text(raw: str) -> str:
    return raw


def _optional_text(raw: str) -> str | None:
    return raw or None


def _postgres_url(raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if not value.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql:// URL (PATH_SQLITE selects SQLite)")
    return value


_HOST_PATTERN = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$"
)


def _networks_and_hosts(raw: str) -> str:
    """Comma-separated CIDRs, addresses and host names (``*.example.com`` for names under
    it); the egress policy (dispatch/egress.py) reads them."""
    for entry in (item.strip() for item in raw.split(",")):
        if not entry:
            continue
        try:
            ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            if not _HOST_PATTERN.match(entry.lower()):
                raise ValueError(f"{entry!r} is neither a CIDR nor a host name") from None
    return raw


def _ports(raw: str) -> str:
    for entry in (item.strip() for item in raw.split(",")):
        if entry and not (entry.isdigit() and 1 <= int(entry) <= 65535):
            raise ValueError(f"{entry!r} is not a port from 1 to 65535")
    return raw


# setting name -> (environment variable names, first wins; cast)
_SOURCES: dict[str, tuple[tuple[str, ...], Callable[[str], Any]]] = {
    "host": (("HOST",), _text),
    "port": (("PORT",), _int(0, 65535)),
    "api_processes": (("API_PROCESSES",), _int(1, 64)),
    "path_sqlite": (("PATH_SQLITE",), _text),
    "database_url": (("DATABASE_URL",), _postgres_url),
    "lease_ms": (("LEASE_MS",), _int(200, 3_600_000)),
    "pg_pool_size": (("PG_POOL_SIZE",), _int(2, 1000)),
    "sqlite_synchronous": (("SQLITE_SYNCHRONOUS",), _choice("FULL", "NORMAL", "EXTRA")),
    "sqlite_busy_timeout_ms": (("SQLITE_BUSY_TIMEOUT_MS",), _int(0)),
    "cipher_key": (("CIPHER_KEY",), _text),
    "tz": (("TZ",), _zone),
    "log": (("LOG",), _bool),
    "log_format": (("LOG_FORMAT",), _choice("plain", "json")),
    "log_level": (("LOG_LEVEL",), _choice("DEBUG", "INFO", "WARNING", "ERROR")),
    "max_size_body_request": (("MAX_SIZE_BODY_REQUEST",), _int(1024)),
    "max_size_data_response": (("MAX_SIZE_DATA_RESPONSE",), _int(0)),
    "max_throttle_request": (("MAX_THROTTLE_REQUEST",), _int(0)),
    "max_throttle_time_window": (("MAX_THROTTLE_TIME_WINDOW",), _int(0)),
    "tasks_in_queue_limit": (("TASKS_IN_QUEUE_LIMIT",), _int(0)),
    "cert_dir": (("CERT_DIR",), _optional_text),
    "path_tls_cert": (("PATH_TLS_CERT",), _optional_text),
    "path_tls_key": (("PATH_TLS_KEY",), _optional_text),
    "path_tls_ca": (("PATH_TLS_CA",), _optional_text),
    "horizon_ms": (("SCHEDULER_HORIZON_MS",), _int(1000)),
    "lookahead_ms": (("SCHEDULER_LOOKAHEAD_MS",), _int(0, 10_000)),
    "max_in_flight": (("MAX_IN_FLIGHT",), _int(1)),
    "max_host_connections": (("MAX_HOST_CONNECTIONS",), _int(0)),
    "max_host_wait_s": (("MAX_HOST_WAIT_S",), _float),
    "host_max_concurrency": (("HOST_MAX_CONCURRENCY",), _int(1)),
    "host_max_rate": (("HOST_MAX_RATE",), _float),
    "host_circuit_failures": (("HOST_CIRCUIT_FAILURES",), _int(0)),
    "host_circuit_cooldown_s": (("HOST_CIRCUIT_COOLDOWN_S",), _float),
    "shutdown_grace_s": (("SHUTDOWN_GRACE_S",), _float),
    "retry_after_max_s": (("RETRY_AFTER_MAX_S",), _int(0)),
    "dedup_window_s": (("DEDUP_WINDOW_S",), _int(1)),
    "max_batch_items": (("MAX_BATCH_ITEMS",), _int(1, 100_000)),
    "max_size_body_batch": (("MAX_SIZE_BODY_BATCH",), _int(1024)),
    "backup_method": (("BACKUP_METHOD_SQLITE",), _choice("LOCAL", "OBJECT_STORAGE")),
    "backup_dir": (("BACKUP_PATH_DIR_SQLITE",), _optional_text),
    "backup_cron": (("BACKUP_CRON_PATTERN_SQLITE",), _optional_text),
    "backup_cron_tz": (("BACKUP_CRON_TZ_SQLITE",), _optional_text),
    "backup_interval_s": (("BACKUP_INTERVAL_S",), _int(0)),
    "backup_keep_last": (("BACKUP_KEEP_LAST",), _int(0)),
    "backup_keep_days": (("BACKUP_KEEP_DAYS",), _int(0)),
    "s3_endpoint": (("BACKUP_OBJECT_STORAGE_ENDPOINT",), _optional_text),
    "s3_access_key": (("BACKUP_OBJECT_STORAGE_ACCESS_KEY",), _optional_text),
    "s3_secret_key": (("BACKUP_OBJECT_STORAGE_SECRET_KEY",), _optional_text),
    "s3_bucket": (("BACKUP_OBJECT_STORAGE_BUCKET_NAME",), _optional_text),
    "s3_path": (("BACKUP_OBJECT_STORAGE_PATH",), _text),
    "s3_region": (("S3_REGION", "AWS_REGION"), _optional_text),
    "s3_session_token": (("S3_SESSION_TOKEN", "AWS_SESSION_TOKEN"), _optional_text),
    "s3_path_style": (("BACKUP_OBJECT_STORAGE_PATH_STYLE",), _bool),
    # S3 refuses parts under 5 MiB (except the last)
    "s3_multipart_threshold_bytes": (
        ("BACKUP_OBJECT_STORAGE_MULTIPART_THRESHOLD",),
        _int(5 * 1024 * 1024),
    ),
    "metrics_key": (("METRICS_KEY",), _optional_text),
    "metrics_public": (("METRICS_PUBLIC",), _bool),
    "admin_key": (("ADMIN_KEY",), _optional_text),
    "http_header_timeout_s": (("HTTP_HEADER_TIMEOUT_S",), _float),
    "http_body_timeout_s": (("HTTP_BODY_TIMEOUT_S",), _float),
    "http_keep_alive_s": (("HTTP_KEEP_ALIVE_S",), _float),
    "max_connections": (("MAX_CONNECTIONS",), _int(0)),
    "max_response_headers_bytes": (("MAX_RESPONSE_HEADERS_BYTES",), _int(0)),
    "attempts_kept": (("ATTEMPTS_KEPT",), _int(0)),
    "retention_finished_days": (("RETENTION_FINISHED_DAYS",), _int(0)),
    "auth_failures_per_minute": (("AUTH_FAILURES_PER_MINUTE",), _int(0)),
    "request_budget": (("REQUEST_BUDGET",), _int(0)),
    "owner_registration": (("OWNER_REGISTRATION",), _choice("open", "admin", "closed")),
    "public_url": (("PUBLIC_URL",), _optional_text),
    "smtp_host": (("SMTP_HOST",), _optional_text),
    "smtp_port": (("SMTP_PORT",), _int(1, 65535)),
    "smtp_user": (("SMTP_USER",), _optional_text),
    "smtp_password": (("SMTP_PASSWORD",), _optional_text),
    "smtp_from": (("SMTP_FROM",), _text),
    "smtp_tls": (("SMTP_TLS",), _choice("none", "starttls", "tls")),
    "smtp_ca_file": (("SMTP_CA_FILE",), _optional_text),
    "alerts_max_per_hour": (("ALERTS_MAX_PER_HOUR",), _int(0)),
    "alert_digest_interval_s": (("ALERT_DIGEST_INTERVAL_S",), _int(0)),
    "egress_allow": (("EGRESS_ALLOW",), _networks_and_hosts),
    "egress_deny": (("EGRESS_DENY",), _networks_and_hosts),
    "egress_proxies": (("EGRESS_PROXIES",), _networks_and_hosts),
    "egress_ports": (("EGRESS_PORTS",), _ports),
    "dashboard": (("DASHBOARD",), _bool),
    "dashboard_session_s": (("DASHBOARD_SESSION_S",), _int(60, 30 * 86400)),
    "signing_overlap_s": (("SIGNING_OVERLAP_S",), _int(0, 30 * 86_400)),
}

ENV_VARIABLES: tuple[str, ...] = tuple(name for names, _ in _SOURCES.values() for name in names)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines; ``#`` comments, blank lines and quotes are allowed."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.removeprefix("export ").partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}", line, "expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = None,
    **overrides: Any,
) -> Settings:
    """Build Settings from ``.env`` (if present), then the environment, then overrides.

    Raises ConfigError naming the first bad key and its value.
    """
    source: dict[str, str] = {}
    path = env_file if env_file is not None else Path(".env")
    if path.is_file():
        source.update(read_env_file(path))
    elif env_file is not None:
        raise ConfigError("--env-file", str(env_file), "no such file")
    source.update(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for name, (keys, cast) in _SOURCES.items():
        for key in keys:
            if key in source:
                values[name] = _cast(key, source[key], cast)
                break
    values.update({k: v for k, v in overrides.items() if v is not None})
    return validate(Settings(**values))


def _cast(key: str, raw: str, cast: Callable[[str], T]) -> T:
    try:
        return cast(raw)
    except ValueError as exc:
        raise ConfigError(key, raw, str(exc)) from exc


def validate(settings: Settings) -> Settings:
    """Cross-field rules that a single cast cannot see."""
    if bool(settings.path_tls_cert) != bool(settings.path_tls_key):
        raise ConfigError("PATH_TLS_CERT", settings.path_tls_cert, "needs PATH_TLS_KEY too")
    _validate_backups(settings)
    if settings.uses_postgres and settings.api_processes > 1:
        raise ConfigError(
            "API_PROCESSES",
            settings.api_processes,
            "is for SQLite; on PostgreSQL run several nodes instead (README, 'Running "
            "several nodes')",
        )
    if settings.registration_mode == "admin" and not settings.admin_key:
        raise ConfigError("OWNER_REGISTRATION", "admin", "needs ADMIN_KEY")
    for key, secret in (("METRICS_KEY", settings.metrics_key), ("ADMIN_KEY", settings.admin_key)):
        if secret is not None and not _is_bearer_secret(secret):
            # the value is a secret: the message must not echo it
            raise ConfigError(key, "***", "must be 16 to 256 printable characters, no spaces")
    return settings


def _validate_backups(settings: Settings) -> None:
    if settings.backup_method == "OBJECT_STORAGE" and settings.backup_is_scheduled:
        for key, value in (
            ("BACKUP_OBJECT_STORAGE_BUCKET_NAME", settings.s3_bucket),
            ("BACKUP_OBJECT_STORAGE_ACCESS_KEY", settings.s3_access_key),
            ("BACKUP_OBJECT_STORAGE_SECRET_KEY", settings.s3_secret_key),
        ):
            if not value:
                raise ConfigError(key, value, "is required for OBJECT_STORAGE backups")
    if settings.backup_cron and settings.backup_interval_s:
        raise ConfigError(
            "BACKUP_INTERVAL_S", settings.backup_interval_s, "cannot be combined with a cron"
        )
    if settings.uses_postgres and settings.backup_is_scheduled:
        raise ConfigError(
            "BACKUP_CRON_PATTERN_SQLITE",
            settings.backup_cron or settings.backup_interval_s,
            "scheduled backups copy SQLite files; back PostgreSQL up with pg_dump or PITR",
        )
    local = settings.backup_method == "LOCAL"
    if local and settings.backup_is_scheduled and not settings.backup_dir:
        raise ConfigError("BACKUP_PATH_DIR_SQLITE", None, "is required for LOCAL backups")


def _is_bearer_secret(value: str) -> bool:
    return 16 <= len(value) <= 256 and value.isprintable() and " " not in value


def describe(settings: Settings) -> dict[str, object]:
    """Settings as a dict with secrets masked, for ``check-config``, logs and the dashboard.

    A setting is a secret when its field is declared with ``repr=False``: the same mark that
    keeps it out of ``repr(settings)``, so a new secret cannot be masked in one place and
    shown in the other."""
    return {
        f.name: "***" if not f.repr and getattr(settings, f.name) else getattr(settings, f.name)
        for f in fields(settings)
    }


DEFAULT_SERVER_URL = "http://127.0.0.1:9420"


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Where the CLI's client commands (``owner …``, ``task …``) find a running server, and
    the credentials they send. Flags override these environment variables."""

    url: str = DEFAULT_SERVER_URL  # TASKS_URL
    owner_id: str | None = None  # TASKS_OWNER_ID
    key: str | None = field(default=None, repr=False)  # TASKS_KEY: the owner's key
    admin_key: str | None = field(default=None, repr=False)  # TASKS_ADMIN_KEY, else ADMIN_KEY
    cacert: str | None = None  # TASKS_CACERT: CA bundle for an HTTPS server
    timeout_s: float = 30.0  # TASKS_TIMEOUT_S


_CLIENT_SOURCES: dict[str, tuple[tuple[str, ...], Callable[[str], Any]]] = {
    "url": (("TASKS_URL",), _text),
    "owner_id": (("TASKS_OWNER_ID",), _optional_text),
    "key": (("TASKS_KEY",), _optional_text),
    "admin_key": (("TASKS_ADMIN_KEY", "ADMIN_KEY"), _optional_text),
    "cacert": (("TASKS_CACERT",), _optional_text),
    "timeout_s": (("TASKS_TIMEOUT_S",), _float),
}

CLIENT_ENV_VARIABLES: tuple[str, ...] = tuple(
    name for names, _ in _CLIENT_SOURCES.values() for name in names
)


def load_client(environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientSettings:
    """Build ClientSettings from the environment, then overrides (flags; None = unset).

    Raises ConfigError naming the first bad key and its value.
    """
    source = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (keys, cast) in _CLIENT_SOURCES.items():
        for key in keys:
            if source.get(key):
                values[name] = _cast(key, source[key], cast)
                break
    values.update({k: v for k, v in overrides.items() if v is not None})
    url = str(values.get("url", DEFAULT_SERVER_URL))
    if not url.startswith(("http://", "https://")):
        raise ConfigError("TASKS_URL", url, "must start with http:// or https://")
    values["url"] = url.rstrip("/")
    return ClientSettings(**values)
