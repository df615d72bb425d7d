"""Signed outgoing requests (Standard Webhooks 1.0): pure, no I/O.

Every call carries ``webhook-id`` (the task id: the same on every retry, so a target can
deduplicate), ``webhook-timestamp`` (seconds, per attempt) and ``webhook-signature``:
``v1,<base64 HMAC-SHA256>`` over ``id.timestamp.body`` with each of the owner's current
secrets, space separated (two during a rotation's overlap). The specification:
https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the specification asks for 24 to 64


@dataclass(frozen=True, slots=True)
class Signing:
    """What signs one attempt: its message id, its time (epoch seconds) and the secrets."""

    message_id: str
    timestamp_s: int
    secrets: tuple[bytes, ...]


def secret_text(secret: bytes) -> str:
    """The secret as owners and verifying libraries read it: ``whsec_<base64>``."""
    return SECRET_PREFIX + base64.b64encode(secret).decode()


def signature(secret: bytes, message_id: str, timestamp_s: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp_s}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(signing: Signing, body: bytes) -> tuple[tuple[str, str], ...]:
    """The three headers for ``body`` (the exact bytes sent)."""
    signatures = " ".join(
        signature(secret, signing.message_id, signing.timestamp_s, body)
        for secret in signing.secrets
    )
    return (
        ("webhook-id", signing.message_id),
        ("webhook-timestamp", str(signing.timestamp_s)),
        ("webhook-signature", signatures),
    )
