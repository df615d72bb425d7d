"""An attempt's error and response headers, stored sealed together as one value (both may
carry secrets: a target's error text, a session cookie in a response header)."""

from __future__ import annotations

import json
from typing import Any

from ..sealing import Sealer


def detail_json(error: str | None, headers: Any) -> bytes | None:
    """An attempt's error and response headers as one JSON value, before sealing (None
    when there is neither)."""
    if error is None and not headers:
        return None
    return json.dumps({"error": error, "headers": headers}).encode()


def seal_detail(sealer: Sealer, error: str | None, headers: Any) -> bytes | None:
    """``detail_json`` sealed."""
    detail = detail_json(error, headers)
    return None if detail is None else sealer.seal(detail)


def open_detail(sealer: Sealer, blob: bytes) -> tuple[str | None, list[list[str]]]:
    """The error and headers sealed by seal_detail."""
    detail = json.loads(sealer.open(blob))
    return detail["error"], detail["headers"]
