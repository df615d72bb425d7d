"""Wire ↔ domain for the delivery options: Cloud Tasks' retry policy and flow control."""

from __future__ import annotations

from typing import Any

from ..models import FlowControl, FlowPeriod, Jitter, RetryPolicy
from .errors import field_error
from .schemas import ConfigIn, FlowControlIn, RetryPolicyIn

ORIGINAL_RETRY_FIELDS = ("retry", "retryAt", "retryInterval", "retryExponential")


def check_retry_policy(config: ConfigIn) -> None:
    """A task uses the original's retry fields or ``retryPolicy``, never both."""
    if config.retryPolicy is None:
        return
    for name in ORIGINAL_RETRY_FIELDS:
        if name in config.model_fields_set:
            raise field_error(
                ("config", "retryPolicy"), f"retryPolicy cannot be combined with {name}"
            )
    policy = config.retryPolicy
    if policy.maxBackoffMs < policy.minBackoffMs:
        raise field_error(
            ("config", "retryPolicy", "maxBackoffMs"), "maxBackoffMs must be at least minBackoffMs"
        )
    if policy.maxAttempts == 0:
        raise field_error(
            ("config", "retryPolicy", "maxAttempts"), "maxAttempts must be -1 or at least 1"
        )


def to_retry_policy(wire: RetryPolicyIn | None) -> RetryPolicy | None:
    if wire is None:
        return None
    return RetryPolicy(
        max_attempts=wire.maxAttempts,
        max_retry_duration_ms=wire.maxRetryDurationMs,
        min_backoff_ms=wire.minBackoffMs,
        max_backoff_ms=wire.maxBackoffMs,
        max_doublings=wire.maxDoublings,
        jitter=Jitter(wire.jitter),
    )


def to_flow_control(wire: FlowControlIn | None) -> FlowControl | None:
    if wire is None:
        return None
    return FlowControl(wire.key, wire.rate, FlowPeriod(wire.period), wire.parallelism)


def policy_out(policy: RetryPolicy | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {
        "maxAttempts": policy.max_attempts,
        "maxRetryDurationMs": policy.max_retry_duration_ms,
        "minBackoffMs": policy.min_backoff_ms,
        "maxBackoffMs": policy.max_backoff_ms,
        "maxDoublings": policy.max_doublings,
        "jitter": policy.jitter.value,
    }


def flow_out(flow: FlowControl | None) -> dict[str, Any] | None:
    if flow is None:
        return None
    wire = {
        "key": flow.key,
        "rate": flow.rate,
        "period": flow.period.value,
        "parallelism": flow.parallelism,
    }
    return {name: value for name, value in wire.items() if value is not None}
