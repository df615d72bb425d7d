"""Every sealed column of the SQLite schema, the key check value that catches a wrong
cipher key at start-up, and re-sealing everything under a new key.

A migration that adds a sealed column must add it to ``SEALED`` (a test compares this
list with the schema's BLOB columns), or key rotation would leave it unreadable."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import LiteralString

from ...errors import ConfigError
from ...sealing import Sealer
from ..details import seal_detail

CHECK_TEXT = b"tasks-server key check v1"
CHECK_READ: LiteralString = "SELECT value FROM seal_check WHERE id = 1"
CHECK_WRITE: LiteralString = "INSERT OR REPLACE INTO seal_check (id, value) VALUES (1, ?)"
# a sealed value written before the key check existed, to test an old database's key
TASK_SAMPLE: LiteralString = "SELECT spec FROM task LIMIT 1"
SAMPLE_READ: LiteralString = "SELECT spec FROM task UNION ALL SELECT spec FROM schedule LIMIT 1"


@dataclass(frozen=True, slots=True)
class SealedColumns:
    """One table's sealed columns, with the statements that read and rewrite them."""

    table: str
    columns: tuple[str, ...]
    select: LiteralString  # key columns first, then the sealed columns
    update: LiteralString  # sealed columns first, then the key columns
    keys: int  # how many key columns lead each selected row


SEALED = (
    SealedColumns(
        "task",
        ("spec", "response", "metadata"),
        "SELECT id, spec, response, metadata FROM task",
        "UPDATE task SET spec = ?, response = ?, metadata = ? WHERE id = ?",
        1,
    ),
    SealedColumns(
        "attempt",
        ("response", "detail"),
        "SELECT task_id, number, response, detail FROM attempt",
        "UPDATE attempt SET response = ?, detail = ? WHERE task_id = ? AND number = ?",
        2,
    ),
    SealedColumns(
        "schedule",
        ("spec", "metadata"),
        "SELECT id, spec, metadata FROM schedule",
        "UPDATE schedule SET spec = ?, metadata = ? WHERE id = ?",
        1,
    ),
    SealedColumns(
        "workflow_run",
        ("input", "metadata", "callbacks"),
        "SELECT id, input, metadata, callbacks FROM workflow_run",
        "UPDATE workflow_run SET input = ?, metadata = ?, callbacks = ? WHERE id = ?",
        1,
    ),
    SealedColumns(
        "workflow_step",
        ("template", "result"),
        "SELECT run_id, step_id, template, result FROM workflow_step",
        "UPDATE workflow_step SET template = ?, result = ? WHERE run_id = ? AND step_id = ?",
        2,
    ),
    SealedColumns(
        "alert_rule",
        ("definition",),
        "SELECT id, definition FROM alert_rule",
        "UPDATE alert_rule SET definition = ? WHERE id = ?",
        1,
    ),
    SealedColumns(
        "alert_incident",
        ("state",),
        "SELECT rule_id, subject, state FROM alert_incident",
        "UPDATE alert_incident SET state = ? WHERE rule_id = ? AND subject = ?",
        2,
    ),
    SealedColumns(
        "owner_security",
        ("signing_secret", "previous_secret"),
        "SELECT owner_id, signing_secret, previous_secret FROM owner_security",
        "UPDATE owner_security SET signing_secret = ?, previous_secret = ? WHERE owner_id = ?",
        1,
    ),
)
# BLOB columns that hold no sealed value: digests, and the check value itself
NOT_SEALED = {("owner", "key_digest"), ("seal_check", "value")}

# attempts written before their error and headers were sealed
LEGACY_DETAIL: LiteralString = (
    "SELECT task_id, number, error, headers FROM attempt "
    "WHERE detail IS NULL AND (error IS NOT NULL OR headers IS NOT NULL)"
)
LEGACY_SEAL: LiteralString = (
    "UPDATE attempt SET detail = ?, error = NULL, headers = NULL WHERE task_id = ? AND number = ?"
)


def wrong_key(path: object) -> ConfigError:
    return ConfigError(
        "CIPHER_KEY",
        "***",
        f"does not open the values sealed in {path}: it is not the key this database "
        "was made with (or the key file beside it is not that database's)",
    )


def verify_key(conn: sqlite3.Connection, sealer: Sealer, path: object) -> None:
    """Raise ConfigError naming CIPHER_KEY unless ``sealer`` opens the database's key
    check value. A database without one gets one, once a sealed value it already holds
    (if any) has opened with ``sealer``."""
    row = conn.execute(CHECK_READ).fetchone()
    try:
        if row is not None:
            if sealer.open(row[0]) != CHECK_TEXT:
                raise wrong_key(path)
            return
        sample = conn.execute(SAMPLE_READ).fetchone()
        if sample is not None:
            sealer.open(sample[0])
    except ValueError as exc:
        raise wrong_key(path) from exc
    conn.execute(CHECK_WRITE, (sealer.seal(CHECK_TEXT),))


def reseal(conn: sqlite3.Connection, old: Sealer, new: Sealer) -> int:
    """Open every sealed value with ``old`` and seal it with ``new``, seal attempt details
    still stored in the clear, and replace the key check value. Runs inside the caller's
    transaction. Returns how many values were written."""
    written = 0
    for sealed in SEALED:
        for row in conn.execute(sealed.select).fetchall():
            keys, values = row[: sealed.keys], row[sealed.keys :]
            fresh = [None if v is None else new.seal(old.open(v)) for v in values]
            conn.execute(sealed.update, (*fresh, *keys))
            written += sum(v is not None for v in values)
    for task_id, number, error, headers in conn.execute(LEGACY_DETAIL).fetchall():
        detail = seal_detail(new, error, json.loads(headers or "[]"))
        conn.execute(LEGACY_SEAL, (detail, task_id, number))
        written += 1
    conn.execute(CHECK_WRITE, (new.seal(CHECK_TEXT),))
    return written


def check_key(path: Path, sealer: Sealer) -> None:
    """Before serving: raise ConfigError naming CIPHER_KEY when the database at ``path``
    exists and ``sealer`` does not open its key check value (or, in a database from
    before the check value, its first sealed task). Reads only."""
    if not path.is_file():
        return
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "seal_check" in tables and (row := conn.execute(CHECK_READ).fetchone()):
            if sealer.open(row[0]) != CHECK_TEXT:
                raise wrong_key(path)
        elif "task" in tables and (row := conn.execute(TASK_SAMPLE).fetchone()):
            sealer.open(row[0])
    except ValueError as exc:
        raise wrong_key(path) from exc
    finally:
        conn.close()
