"""Owner security rows as both stores read and write them: the signing secrets are
sealed, the validated domains a JSON list."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from ..models import OwnerSecurity
from ..sealing import Sealer


def new_signing_secret() -> bytes:
    """A Standard Webhooks signing secret: 32 bytes from the OS's CSPRNG."""
    return secrets.token_bytes(32)


def security_params(sealer: Sealer, security: OwnerSecurity) -> tuple[Any, ...]:
    """The columns both stores write, in table order after owner_id."""
    hosts = security.allowed_hosts
    previous = security.previous_secret
    return (
        sealer.seal(security.signing_secret),
        None if previous is None else sealer.seal(previous),
        security.previous_until_ms,
        security.signing_enabled,
        None if hosts is None else json.dumps(list(hosts)),
    )


def security_from_row(sealer: Sealer, row: Sequence[Any]) -> OwnerSecurity:
    hosts = None if row[4] is None else tuple(json.loads(row[4]))
    return OwnerSecurity(
        signing_secret=sealer.open(bytes(row[0])),
        previous_secret=None if row[1] is None else sealer.open(bytes(row[1])),
        previous_until_ms=row[2],
        signing_enabled=bool(row[3]),
        allowed_hosts=hosts,
    )
