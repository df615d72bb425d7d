"""Wire models ↔ domain values: the cross-field rules and normalisation of the
original (docs/compatibility.md#cross-field-rules and #normalisation)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationFailed
from ..models import (
    DEFAULT_USER_AGENT,
    AwsSigv4,
    ClientCert,
    Cookie,
    Credentials,
    FormField,
    HttpRequest,
    NewTask,
    Pem,
    Proxy,
    ResolveEntry,
    TaskConfig,
    TaskSpec,
)
from ..timing import first_due_ms
from .delivery import (
    ORIGINAL_RETRY_FIELDS,
    check_retry_policy,
    flow_out,
    policy_out,
    to_flow_control,
    to_retry_policy,
)
from .errors import field_error as field_error  # re-exported: handlers import it from here
from .schemas import BatchItemIn, ConfigIn, CredentialsIn, HttpRequestIn, TaskIn

_CURL_ONLY_FETCH_FIELDS = ("credentials", "referrerPolicy", "mode")
# json.dumps with any option builds a new encoder per call; this one is built once
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def _compact_json(value: Any) -> str:
    """``_COMPACT_JSON.encode(value)``, the same text, several times faster for the small
    bodies of most tasks: JSONEncoder.encode builds its C encoder anew on every call; this
    one is built once. Without the circular-reference check, which parsed JSON (the only
    input) does not need."""
    if _C_COMPACT is None:  # a Python without the json module's C speedups
        return _COMPACT_JSON.encode(value)
    return "".join(_C_COMPACT(value, 0))


_MAKE_ENCODER: Callable[..., Callable[[Any, int], Sequence[str]]] | None = getattr(
    json.encoder, "c_make_encoder", None
)
_C_COMPACT = (
    None
    if _MAKE_ENCODER is None
    else _MAKE_ENCODER(
        None,  # no markers: no check for circular references
        _COMPACT_JSON.default,
        json.encoder.encode_basestring_ascii,
        None,  # no indent
        _COMPACT_JSON.key_separator,
        _COMPACT_JSON.item_separator,
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )
)


def to_new_task(body: TaskIn, now_ms: int) -> NewTask:
    """Apply the cross-field rules (raising ValidationFailed) and build the domain task."""
    new = new_task(body, plan_config(body.config, body.httpRequest.transport, now_ms))
    if isinstance(new, ValidationFailed):
        raise new
    return new


@dataclass(frozen=True, slots=True)
class ConfigPlan:
    """What a registration's configuration decides on its own (given its transport and
    the time of registration): the task configuration and the first due time, or why the
    configuration is refused. Items of a batch that share a configuration share a plan.

    ``past`` (an ``executeAt`` not in the future) is answered before the request's own
    rules; ``refused`` (every other rule of the configuration) after them.
    """

    config: TaskConfig | None
    due_ms: int = 0
    past: ValidationFailed | None = None
    refused: ValidationFailed | None = None


def plan_config(wire: ConfigIn, transport: str | None, now_ms: int) -> ConfigPlan:
    if wire.executeAt is not None and wire.executeAt <= now_ms:
        error = field_error(("config", "executeAt"), "Execution date must be greater than today")
        return ConfigPlan(None, past=error)
    try:
        config, due = _checked_config(wire, transport, now_ms)
    except ValidationFailed as exc:
        return ConfigPlan(None, refused=exc)
    return ConfigPlan(config, due)


def _checked_config(wire: ConfigIn, transport: str | None, now_ms: int) -> tuple[TaskConfig, int]:
    if transport == "curl":
        for name in _CURL_ONLY_FETCH_FIELDS:
            if getattr(wire, name) is not None:
                raise field_error(("config", name), "Invalid curl option")
    check_retry_policy(wire)
    config = remembered_config(wire, transport)
    due = first_due_ms(config, now_ms)
    if config.retry_at_ms is not None and config.retry_at_ms < due + 1000:
        raise field_error(("config", "retryAt"), "Retry date must be greater than execution date")
    if (
        config.retry_at_ms is None
        and config.timeout_at_ms is not None
        and config.timeout_at_ms < due + 1000
    ):
        raise field_error(
            ("config", "timeoutAt"), "Timeout date must be greater than execution date"
        )
    return config, due


def new_task(body: TaskIn | BatchItemIn, plan: ConfigPlan) -> NewTask | ValidationFailed:
    """The domain task of a registration whose configuration is planned, or why it is
    refused (returned, not raised: a batch answers many items with one plan's error)."""
    request = body.httpRequest
    if plan.past is not None:
        return plan.past
    if request.data is not None and request.json_body is not None:
        return field_error(
            ("httpRequest", "json"), "Give the body either as data or as json, not both"
        )
    if plan.refused is not None or plan.config is None:
        return plan.refused or ValidationFailed()
    metadata = tuple(body.metadata.items()) if body.metadata else None
    spec = TaskSpec(
        to_request(request),
        plan.config,
        metadata,
        on_success=None if body.onSuccess is None else to_request(body.onSuccess),
        on_failure=None if body.onFailure is None else to_request(body.onFailure),
    )
    return NewTask(spec, plan.due_ms)


def _credentials(value: CredentialsIn | None) -> Credentials | None:
    return None if value is None else Credentials(value.username, value.password)


def _pem(value: str | None) -> Pem | None:
    if value is None:
        return None
    if value.lstrip().startswith("-----BEGIN"):
        return Pem(content=value.encode())
    try:
        return Pem(content=base64.b64decode(value, validate=True))
    except ValueError:
        return Pem(path=value)


# a request giving no more than these fields takes the defaults of all others
_PLAIN_REQUEST_FIELDS = frozenset({"url", "method", "data", "json_body", "transport"})


def to_request(wire: HttpRequestIn) -> HttpRequest:
    data = None if wire.method in ("GET", "DELETE") else wire.data
    json_text = None
    if isinstance(data, dict):
        json_text = _compact_json(data)
    elif wire.json_body is not None and wire.method not in ("GET", "DELETE"):
        json_text = _compact_json(wire.json_body)
    if wire.__pydantic_fields_set__ <= _PLAIN_REQUEST_FIELDS and not isinstance(data, list):
        # most requests, built with the few arguments they need: a frozen dataclass
        # sets its fields one call each, and every keyword argument costs a lookup
        text = data if isinstance(data, str) else None
        return HttpRequest(
            wire.url,
            wire.method,
            (),
            (),
            text,
            json_text,
            None,
            None,
            None,
            transport=wire.transport,
        )
    aws = wire.authAwsSigv4
    return HttpRequest(
        url=wire.url,
        method=wire.method,
        query=tuple((wire.query or {}).items()),
        headers=tuple((wire.headers or {}).items()),
        data_text=data if isinstance(data, str) else None,
        data_json=json_text,
        form=tuple(FormField(f.name, f.value) for f in data) if isinstance(data, list) else None,
        cookie_file=(
            base64.b64decode(wire.cookie).decode() if isinstance(wire.cookie, str) else None
        ),
        cookies=(
            tuple(Cookie(c.name, c.value) for c in wire.cookie)
            if isinstance(wire.cookie, list)
            else None
        ),
        auth_basic=_credentials(wire.authBasic),
        auth_digest=_credentials(wire.authDigest),
        auth_ntlm=_credentials(wire.authNtlm),
        auth_aws_sigv4=None if aws is None else AwsSigv4(**aws.model_dump()),
        transport=wire.transport,
    )


# to_config is pure, and most registrations repeat one of a few configurations (a batch
# usually one for all its items): its result is remembered by the validated
# configuration's JSON. Building a TaskConfig (60 fields) costs several times more than
# that JSON (pydantic writes it in Rust).
_CONFIGS: dict[tuple[str | None, object], TaskConfig] = {}
_CONFIGS_KEPT = 1024


def _config_key(wire: ConfigIn) -> object:
    """What identifies a validated configuration: the fields it gives, with their types
    (so ``1`` and ``True`` differ) and values; its JSON when a value is unhashable (a list,
    a dict). The set of given fields is several times cheaper than the JSON."""
    values = wire.__dict__
    try:  # a frozenset hashes its items as it is built
        return frozenset(
            (name, type(values[name]), values[name]) for name in wire.__pydantic_fields_set__
        )
    except TypeError:
        return wire.__pydantic_serializer__.to_json(wire, exclude_unset=True)


def remembered_config(wire: ConfigIn, transport: str | None) -> TaskConfig:
    """``to_config(wire, transport)``, from memory when the same configuration was
    converted before (the result is frozen, so it can be shared)."""
    key = (transport, _config_key(wire))
    config = _CONFIGS.get(key)
    if config is None:
        if len(_CONFIGS) >= _CONFIGS_KEPT:
            _CONFIGS.clear()
        config = _CONFIGS[key] = to_config(wire, transport)
    return config


def to_config(wire: ConfigIn, transport: str | None) -> TaskConfig:
    retry_at = wire.retryAt
    retry = 1 if retry_at is not None else int(wire.retry)
    if wire.retryPolicy is not None:
        retry = 0
    referer = wire.refererUrl
    if transport == "curl":
        referer = referer or "AUTO"
    elif referer == "AUTO":
        referer = None  # only curl has an automatic referer
    return TaskConfig(
        execution_delay_ms=0 if wire.executeAt is not None else int(wire.executionDelay),
        execute_at_ms=wire.executeAt,
        execute_immediately=wire.executeImmediately,
        retry=retry,
        retry_at_ms=retry_at,
        retry_interval_ms=0 if retry_at is not None else int(wire.retryInterval),
        retry_exponential=wire.retryExponential and retry >= 2,
        ignore_status_code=tuple(wire.ignoreStatusCode),
        timeout_ms=int(wire.timeout),
        timeout_at_ms=wire.timeoutAt,
        http_version=wire.httpVersion,
        user_agent=wire.userAgent or DEFAULT_USER_AGENT,
        ip_version=wire.ipVersion,
        credentials=wire.credentials,
        referer_url=referer,
        referrer_policy=wire.referrerPolicy,
        mode=wire.mode,
        keep_alive_duration_s=int(wire.keepAliveDuration),
        hsts=base64.b64decode(wire.hsts).decode() if isinstance(wire.hsts, str) else wire.hsts,
        session_id=wire.sessionId,
        insecure=wire.insecure,
        trace_response_data=wire.traceResponseData,
        ca=_pem(wire.ca),
        cert=(
            None
            if wire.cert is None
            else ClientCert(_pem(wire.cert.value) or Pem(), wire.cert.password)
        ),
        cert_type=wire.certType,
        cert_status=wire.certStatus,
        key=_pem(wire.key),
        key_type=wire.keyType,
        location=wire.location,
        location_trusted=_credentials(wire.locationTrusted),
        redirect_attempts=int(wire.redirectAttempts),
        proto=wire.proto,
        proto_redirect=wire.protoRedirect,
        dns_server=tuple(wire.dnsServer) if wire.dnsServer else None,
        resolve=(
            tuple(ResolveEntry(r.host, r.port, tuple(r.address)) for r in wire.resolve)
            if wire.resolve
            else None
        ),
        doh_url=wire.dohUrl,
        doh_insecure=wire.dohInsecure,
        tls_version=wire.tlsVersion,
        tls_max_version=wire.tlsMaxVersion,
        proxy=(
            None
            if wire.proxy is None
            else Proxy(wire.proxy.protocol, wire.proxy.host, wire.proxy.port)
        ),
        proxy_headers=tuple(wire.proxyHeaders.items()) if wire.proxyHeaders else None,
        proxy_insecure=wire.proxyInsecure,
        proxy_http_version=wire.proxyHttpVersion,
        proxy_auth_ntlm=_credentials(wire.proxyAuthNtlm),
        proxy_auth_basic=_credentials(wire.proxyAuthBasic),
        proxy_auth_digest=_credentials(wire.proxyAuthDigest),
        ha_proxy_client_ip=wire.haProxyClientIp,
        ha_proxy_protocol=wire.haProxyProtocol,
        retry_policy=to_retry_policy(wire.retryPolicy),
        retry_on=tuple(wire.retryOn),
        no_retry_on=tuple(wire.noRetryOn),
        priority=wire.priority,
        deduplication_id=wire.deduplicationId,
        flow_control=to_flow_control(wire.flowControl),
    )


# -- domain → wire ----------------------------------------------------------------------


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _cred_out(value: Credentials | None) -> dict[str, str] | None:
    return None if value is None else {"username": value.username, "password": value.password}


def _pem_out(value: Pem | None) -> str | None:
    if value is None:
        return None
    if value.path is not None:
        return value.path
    content = value.content or b""
    if content.lstrip().startswith(b"-----BEGIN"):
        return content.decode()
    return base64.b64encode(content).decode()


def request_to_wire(request: HttpRequest) -> dict[str, Any]:
    data: Any = request.data_text
    json_body: Any = None
    if request.data_json is not None:
        data = json.loads(request.data_json)
        if not isinstance(data, dict):  # sent as `json`: under `data` it would mean a form
            data, json_body = None, data
    elif request.form is not None:
        data = [{"name": f.name, "value": f.value} for f in request.form]
    cookie: Any = None
    if request.cookie_file is not None:
        cookie = base64.b64encode(request.cookie_file.encode()).decode()
    elif request.cookies is not None:
        cookie = [{"name": c.name, "value": c.value} for c in request.cookies]
    aws = request.auth_aws_sigv4
    wire = {
        "url": request.url,
        "method": request.method,
        "query": dict(request.query) or None,
        "headers": dict(request.headers) or None,
        "data": data,
        "json": json_body,
        "cookie": cookie,
        "authBasic": _cred_out(request.auth_basic),
        "authDigest": _cred_out(request.auth_digest),
        "authNtlm": _cred_out(request.auth_ntlm),
        "authAwsSigv4": None
        if aws is None
        else {
            "provider1": aws.provider1,
            "provider2": aws.provider2,
            "region": aws.region,
            "service": aws.service,
            "key": aws.key,
            "secret": aws.secret,
        },
        "transport": request.transport,
    }
    return _without_none(wire)


def config_to_wire(config: TaskConfig) -> dict[str, Any]:
    c = config
    wire: dict[str, Any] = {
        "executionDelay": c.execution_delay_ms,
        "executeAt": c.execute_at_ms,
        "executeImmediately": c.execute_immediately,
        "retry": c.retry,
        "retryAt": c.retry_at_ms,
        "retryInterval": c.retry_interval_ms if c.retry_at_ms is None else None,
        "retryExponential": c.retry_exponential,
        "ignoreStatusCode": list(c.ignore_status_code),
        "timeout": c.timeout_ms,
        "timeoutAt": c.timeout_at_ms,
        "httpVersion": c.http_version,
        "userAgent": c.user_agent,
        "ipVersion": c.ip_version,
        "credentials": c.credentials,
        "refererUrl": c.referer_url,
        "referrerPolicy": c.referrer_policy,
        "mode": c.mode,
        "keepAliveDuration": c.keep_alive_duration_s,
        "hsts": base64.b64encode(c.hsts.encode()).decode() if isinstance(c.hsts, str) else c.hsts,
        "sessionId": c.session_id,
        "insecure": c.insecure,
        "traceResponseData": c.trace_response_data,
        "ca": _pem_out(c.ca),
        "cert": None
        if c.cert is None
        else _without_none({"value": _pem_out(c.cert.value), "password": c.cert.password}),
        "certType": c.cert_type,
        "certStatus": c.cert_status,
        "key": _pem_out(c.key),
        "keyType": c.key_type,
        "location": c.location,
        "locationTrusted": _cred_out(c.location_trusted),
        "redirectAttempts": c.redirect_attempts,
        "proto": c.proto,
        "protoRedirect": c.proto_redirect,
        "dnsServer": list(c.dns_server) if c.dns_server else None,
        "resolve": [
            {"host": r.host, "port": r.port, "address": list(r.addresses)} for r in c.resolve
        ]
        if c.resolve
        else None,
        "dohUrl": c.doh_url,
        "dohInsecure": c.doh_insecure,
        "tlsVersion": c.tls_version,
        "tlsMaxVersion": c.tls_max_version,
        "proxy": None
        if c.proxy is None
        else _without_none(
            {"protocol": c.proxy.protocol, "host": c.proxy.host, "port": c.proxy.port}
        ),
        "proxyHeaders": dict(c.proxy_headers) if c.proxy_headers else None,
        "proxyInsecure": c.proxy_insecure,
        "proxyHttpVersion": c.proxy_http_version,
        "proxyAuthNtlm": _cred_out(c.proxy_auth_ntlm),
        "proxyAuthBasic": _cred_out(c.proxy_auth_basic),
        "proxyAuthDigest": _cred_out(c.proxy_auth_digest),
        "haProxyClientIp": c.ha_proxy_client_ip,
        "haProxyProtocol": c.ha_proxy_protocol,
        "retryOn": list(c.retry_on) or None,
        "noRetryOn": list(c.no_retry_on) or None,
        "priority": c.priority or None,
        "deduplicationId": c.deduplication_id,
        "retryPolicy": policy_out(c.retry_policy),
        "flowControl": flow_out(c.flow_control),
    }
    if c.retry_policy is not None:
        for name in ORIGINAL_RETRY_FIELDS:
            wire.pop(name, None)
    return _without_none(wire)


def spec_to_wire(spec: TaskSpec) -> dict[str, Any]:
    """The stored task as a registration body: what GET …/config shows and PATCH merges."""
    wire: dict[str, Any] = {
        "httpRequest": request_to_wire(spec.request),
        "config": config_to_wire(spec.config),
    }
    if spec.metadata:
        wire["metadata"] = dict(spec.metadata)
    wire.update(callbacks_to_wire(spec))
    return wire


def callbacks_to_wire(spec: TaskSpec) -> dict[str, Any]:
    """``onSuccess`` and ``onFailure`` as registered (without the body the server adds)."""
    wire: dict[str, Any] = {}
    for name, request in (("onSuccess", spec.on_success), ("onFailure", spec.on_failure)):
        if request is not None:
            wire[name] = request_to_wire(request)
    return wire
