"""Wire models: the original's request bodies and queries, validated once at the boundary.

Field names are the wire's camelCase names. Every object is strict (unknown keys are
refused) and numbers must be JSON numbers, as in the original's zod schemas
(docs/compatibility.md#task-body).
Values that need server context (now, the time zone, the certificate directory) read it
from the pydantic validation context.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import os
import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import idna
from dateutil import parser as date_parser
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_SAFE_INTEGER = 2**53 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# -- value rules (docs/compatibility.md#task-body) --------------------------------------

RecordKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9$_.\-\[\]]{1,64}$")]
# header values reach curl: CR and LF would let a caller inject headers of their own
HeaderValue = Annotated[
    str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\r\n\x00]*$")
]

# -- text that reaches the wire: one rule for every header, request line and auth field --

_LINE_BREAKERS = re.compile(r"[\r\n\x00]")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 section 5.6.2


def wire_text(value: str, also: str = "") -> str:
    """Refuse CR, LF and NUL (and the characters in ``also``) in text that libcurl puts in
    a header or a request line, where they would start a line of the caller's own."""
    if _LINE_BREAKERS.search(value):
        raise PydanticCustomError(
            "wire_text", "Must not contain CR, LF or NUL (the value is sent in a header)"
        )
    for char in also:
        if char in value:
            raise PydanticCustomError("wire_text", "Must not contain {char}", {"char": repr(char)})
    return value


def _token(value: str) -> str:
    if not _TOKEN.match(value):
        raise PydanticCustomError(
            "token", "Must be an RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~"
        )
    return value


def _wire(low: int, high: int, also: str = "") -> Any:
    return Annotated[
        str,
        StringConstraints(min_length=low, max_length=high),
        AfterValidator(lambda value: wire_text(value, also)),
    ]


HeaderName = Annotated[RecordKey, AfterValidator(_token)]
# Framing and connection handling belong to the server: a tenant's Content-Length or
# Transfer-Encoding would let its body carry a second request on a kept-alive
# connection. Host is refused too: libcurl derives it from the URL (and the egress
# policy checks that URL); webhook-* are the server's signature headers.
_SERVER_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "host",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


def _tenant_headers(headers: dict[str, str] | None, proxy: bool = False) -> Any:
    for name in headers or {}:
        lowered = name.lower()
        if lowered in _SERVER_HEADERS or (lowered.startswith("proxy-") and not proxy):
            raise PydanticCustomError(
                "server_header",
                "Header {name} is set by the server, not by a task",
                {"name": name},
            )
    return headers


TenantHeaders = Annotated[dict[HeaderName, HeaderValue] | None, AfterValidator(_tenant_headers)]
ProxyHeaders = Annotated[
    dict[HeaderName, HeaderValue] | None, AfterValidator(lambda h: _tenant_headers(h, True))
]


# what the WHATWG URL serialiser percent-encodes besides controls and non-ASCII
_PATH_UNSAFE = ' "<>`{}'
_QUERY_UNSAFE = " \"<>'"
_FRAGMENT_UNSAFE = ' "<>`'


_SAFE = {
    unsafe: "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) not in unsafe)
    for unsafe in (_PATH_UNSAFE, _QUERY_UNSAFE, _FRAGMENT_UNSAFE)
}


def _percent_encode(text: str, unsafe: str) -> str:
    if text.isascii() and text.isprintable() and not any(ch in unsafe for ch in text):
        return text  # the common case, on the registration hot path
    return quote(text, safe=_SAFE[unsafe])


def _ascii_host(host: str) -> str:
    """The host as it goes on the wire: non-ASCII names in their IDNA (UTS 46) form."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise PydanticCustomError(
            "url", "Host name {host} cannot be encoded as IDNA", {"host": host}
        ) from exc


@functools.lru_cache(maxsize=4096)  # pure, and registrations repeat a few URLs many times
def _check_url(value: str) -> str:
    if len(value) > 1024 or any(ch in value for ch in "\r\n\t\x00"):
        raise PydanticCustomError("url", "Invalid url")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise PydanticCustomError("url", "Invalid url") from exc
    if not parts.hostname or " " in parts.netloc:
        raise PydanticCustomError("url", "Invalid url")
    if port == 0:
        raise PydanticCustomError("url", "Port 0 is not allowed")
    scheme = parts.scheme.lower()
    hostname = _ascii_host(parts.hostname)
    netloc = hostname if ":" not in hostname else f"[{hostname}]"
    if parts.username is not None:
        auth = parts.username + (f":{parts.password}" if parts.password is not None else "")
        netloc = f"{auth}@{netloc}"
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        netloc = f"{netloc}:{port}"
    normal = urlunsplit(
        (
            scheme,
            netloc,
            _percent_encode(parts.path or "/", _PATH_UNSAFE),
            _percent_encode(parts.query, _QUERY_UNSAFE),
            _percent_encode(parts.fragment, _FRAGMENT_UNSAFE),
        )
    )
    if value.endswith("?") and not parts.query:
        normal += "?"
    # any path is fine, "/" and none included (the original refused a trailing / or ?,
    # so https://hooks.example.com/ could not be called: docs/compatibility.md#task-body)
    if scheme not in ("http", "https"):
        raise PydanticCustomError("url", "URL must start with http:// or https://")
    return normal


HttpUrl = Annotated[str, AfterValidator(_check_url)]


def _https_only(value: str) -> str:
    if not value.startswith("https://"):
        raise PydanticCustomError("url", "Must be an https URL")
    return value


HttpsUrl = Annotated[str, AfterValidator(_check_url), AfterValidator(_https_only)]


def _check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError as exc:
        raise PydanticCustomError("ip", "Invalid ip") from exc
    return value


Ip = Annotated[str, AfterValidator(_check_ip)]
_HOSTNAME = r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
Hostname = Annotated[str, StringConstraints(max_length=253, pattern=_HOSTNAME)]


def _date_ms(value: Any, info: ValidationInfo) -> int:
    """A date as the original's ``new Date(v)`` would take it, as epoch ms."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PydanticCustomError("date", "Invalid date")
    if isinstance(value, int | float):
        if abs(value) > 8.64e15:
            raise PydanticCustomError("date", "Invalid date")
        return int(value)
    text = value.strip()
    if not text or text.isdigit():
        raise PydanticCustomError("date", "Invalid date")
    # JS engines skip "(zone name)" comments and read "GMT+0700" (Date.toString) as
    # UTC+7; dateutil would read that sign POSIX-style, as UTC-7
    text = re.sub(r"\([^)]*\)", " ", text).strip()
    text = re.sub(r"(?i)\b(?:GMT|UTC)(?=[+-]\d)", "", text)
    try:
        parsed = date_parser.parse(text)
    except (ValueError, OverflowError) as exc:
        raise PydanticCustomError("date", "Invalid date") from exc
    if parsed.tzinfo is None:
        zone = ZoneInfo((info.context or {}).get("tz", "UTC"))
        date_only = re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) is not None
        parsed = parsed.replace(tzinfo=ZoneInfo("UTC") if date_only else zone)
    return int(parsed.timestamp() * 1000)


DateMs = Annotated[int, BeforeValidator(_date_ms)]


def _number(minimum: float, maximum: float = MAX_SAFE_INTEGER) -> Any:
    # integers are not enforced by the original (1.5 passes); we keep the integer part
    return Annotated[float, Field(ge=minimum, le=maximum), AfterValidator(int)]


def _text(low: int, high: int) -> Any:
    return Annotated[str, StringConstraints(min_length=low, max_length=high)]


def _pem_source(value: str, info: ValidationInfo) -> str:
    """Inline PEM, base64 content, or a path inside the configured certificate directory."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if value and decoded:
        return value
    cert_dir = (info.context or {}).get("cert_dir")
    if len(value) <= 256 and cert_dir:
        root = os.path.realpath(cert_dir)
        path = os.path.realpath(os.path.join(root, value))
        if path.startswith(root + os.sep) and os.path.isfile(path):
            return value
    raise PydanticCustomError(
        "pem", "Must be PEM text, base64 content, or a file inside the certificate directory"
    )


PemSource = Annotated[str, AfterValidator(_pem_source)]


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


# -- httpRequest (docs/compatibility.md#request-fields) ---------------------------------


class CredentialsIn(Strict):
    username: _wire(1, 64)  # type: ignore[valid-type]
    password: _wire(1, 256)  # type: ignore[valid-type]


class AwsSigv4In(Strict):
    # libcurl joins the first four with ":" into one option, so ":" would shift them
    provider1: _wire(3, 256, ":")  # type: ignore[valid-type]
    provider2: _wire(3, 256, ":")  # type: ignore[valid-type]
    region: _wire(1, 128, ":")  # type: ignore[valid-type]
    service: _wire(1, 128, ":")  # type: ignore[valid-type]
    key: _wire(1, 256)  # type: ignore[valid-type]
    secret: _wire(1, 256)  # type: ignore[valid-type]


class FormFieldIn(Strict):
    name: _wire(1, 64, '"')  # type: ignore[valid-type]  # a part header's name="..."
    value: _text(1, 4096)  # type: ignore[valid-type]


class CookieIn(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_token)]
    value: _wire(1, 512, ";")  # type: ignore[valid-type]  # ";" would add a cookie


def _json_record(value: Any) -> Any:
    """A JSON object body: any JSON object, any depth, arrays inside included; its size is
    bounded by MAX_SIZE_BODY_REQUEST. (The original allowed 3 object levels, no arrays,
    strings up to 4,096 characters: most real webhook payloads.)"""
    if not isinstance(value, dict):
        raise PydanticCustomError("json_record", "Expected object, received {kind}", _kind(value))
    return value


def _kind(value: Any) -> dict[str, str]:
    kinds = {str: "string", bool: "boolean", int: "number", float: "number", list: "array"}
    return {"kind": kinds.get(type(value), "null")}


JsonRecord = Annotated[dict[str, Any], BeforeValidator(_json_record)]


def _base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, ValueError) as exc:
        raise PydanticCustomError("base64", "Invalid base64") from exc
    if not value:
        raise PydanticCustomError("base64", "Invalid base64")
    return value


Base64Text = Annotated[str, AfterValidator(_base64)]


def _cookie_file(value: str) -> str:
    """Netscape cookie-file text: one cookie a line; a lone CR or a NUL inside a line
    would reach the Cookie header."""
    text = base64.b64decode(value).decode("ascii")
    if "\x00" in text or "\r" in text.replace("\r\n", ""):
        raise PydanticCustomError("wire_text", "Must not contain NUL or a CR outside CRLF")
    return value


CookieFile = Annotated[str, AfterValidator(_base64), AfterValidator(_cookie_file)]
Method = Annotated[Literal["GET", "POST", "PUT", "PATCH", "DELETE"], BeforeValidator(_upper)]


class HttpRequestIn(Strict):
    url: HttpUrl
    method: Method
    query: dict[RecordKey, HeaderValue] | None = None
    headers: TenantHeaders = None
    data: (
        Annotated[str, StringConstraints(min_length=1)]
        | Annotated[list[FormFieldIn], Field(min_length=1, max_length=64)]
        | JsonRecord
        | None
    ) = None
    # any JSON value sent as the JSON body, top-level arrays and scalars included: under
    # `data` an array is the original's multipart form, so it needs a field of its own
    # (null means no body, as it does for `data`)
    json_body: Any = Field(default=None, alias="json")
    cookie: CookieFile | Annotated[list[CookieIn], Field(min_length=1, max_length=16)] | None = None
    authBasic: CredentialsIn | None = None
    authDigest: CredentialsIn | None = None
    authNtlm: CredentialsIn | None = None
    authAwsSigv4: AwsSigv4In | None = None
    transport: Literal["fetch", "curl"] | None = None


# -- config (docs/compatibility.md#config-fields) ---------------------------------------


class ClientCertIn(Strict):
    value: PemSource
    password: _wire(1, 1024) | None = None  # type: ignore[valid-type]


def _port_except(*refused: int) -> Any:
    def check(value: int) -> int:
        if value in refused:
            raise PydanticCustomError("port", "Port {port} is not allowed", {"port": value})
        return value

    return Annotated[int, Field(ge=1, le=65535), AfterValidator(check)]


class ResolveIn(Strict):
    host: Literal["*"] | Hostname
    port: _port_except(22)  # type: ignore[valid-type]
    address: Annotated[list[Ip], Field(min_length=1, max_length=4)]


class ProxyIn(Strict):
    protocol: Annotated[Literal["http", "https"], BeforeValidator(_lower)]
    # a hostname or an IPv4 address (dotted quads match the hostname pattern too)
    host: Annotated[str, StringConstraints(max_length=128, pattern=_HOSTNAME)]
    port: _port_except(20, 21, 22, 23, 25, 53) | None = None  # type: ignore[valid-type]


Version = Literal["1.0", "1.1", "1.2", "1.3"]
_DAY_MS = 86_400_000


class RetryPolicyIn(Strict):
    """Cloud Tasks' retry shape (durations in ms); defaults are Cloud Tasks' own. The wait
    starts at minBackoffMs, doubles maxDoublings times, then grows linearly, capped at
    maxBackoffMs; retrying stops once maxAttempts (-1: unbounded) and maxRetryDurationMs
    (0: unbounded) are both reached."""

    maxAttempts: Annotated[int, Field(ge=-1, le=10_000)] = 100
    maxRetryDurationMs: Annotated[int, Field(ge=0, le=365 * _DAY_MS)] = 0
    minBackoffMs: Annotated[int, Field(ge=0, le=30 * _DAY_MS)] = 100
    maxBackoffMs: Annotated[int, Field(ge=0, le=30 * _DAY_MS)] = 3_600_000
    maxDoublings: Annotated[int, Field(ge=0, le=32)] = 16
    jitter: Literal["none", "full", "equal"] = "none"


FlowKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")]


class FlowControlIn(Strict):
    """At most ``rate`` starts per ``period`` and ``parallelism`` calls in flight among
    the owner's tasks with this key; the last registration sets the limits."""

    key: FlowKey
    rate: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    period: Literal["1s", "1m", "1h"] = "1s"
    parallelism: Annotated[int, Field(ge=1, le=100_000)] | None = None


StatusList = Annotated[list[Annotated[int, Field(ge=400, le=599)]], Field(max_length=40)]


class ConfigIn(Strict):
    executionDelay: _number(0) = 1  # type: ignore[valid-type]
    executeAt: DateMs | None = None
    executeImmediately: bool = False
    retry: _number(0) = 0  # type: ignore[valid-type]
    retryAt: DateMs | None = None
    retryInterval: _number(1) = 1  # type: ignore[valid-type]
    retryExponential: bool = True
    ignoreStatusCode: Annotated[
        list[Annotated[int, Field(ge=400, le=599)]], Field(max_length=40)
    ] = Field(default_factory=list)
    timeout: _number(1000) = 30_000  # type: ignore[valid-type]
    timeoutAt: DateMs | None = None
    httpVersion: Literal["0.9", "1.0", "1.1", "2", "2-prior-knowledge"] = "1.1"
    userAgent: _wire(8, 256) | None = None  # type: ignore[valid-type]
    ipVersion: Literal[4, 6] = 4
    credentials: Literal["include", "omit", "same-origin"] | None = None
    refererUrl: Annotated[Literal["AUTO"], BeforeValidator(_upper)] | HttpUrl | None = None
    referrerPolicy: (
        Literal[
            "",
            "no-referrer",
            "no-referrer-when-downgrade",
            "origin",
            "origin-when-cross-origin",
            "same-origin",
            "strict-origin",
            "strict-origin-when-cross-origin",
            "unsafe-url",
        ]
        | None
    ) = None
    mode: Literal["cors", "no-cors", "same-origin"] | None = None
    keepAliveDuration: _number(0, 259_200) = 30  # type: ignore[valid-type]
    hsts: Base64Text | bool | None = None
    sessionId: bool = True
    insecure: bool = False
    traceResponseData: bool = True
    ca: PemSource | None = None
    cert: ClientCertIn | None = None
    certType: Annotated[Literal["DER", "ENG", "P12", "PEM"], BeforeValidator(_upper)] | None = None
    certStatus: bool | None = None
    key: PemSource | None = None
    keyType: Annotated[Literal["DER", "ENG", "PEM"], BeforeValidator(_upper)] | None = None
    location: bool = True
    locationTrusted: CredentialsIn | None = None
    redirectAttempts: _number(0, 32) = 8  # type: ignore[valid-type]
    proto: Annotated[Literal["http", "https"], BeforeValidator(_lower)] | None = None
    protoRedirect: Annotated[Literal["http", "https"], BeforeValidator(_lower)] | None = None
    dnsServer: Annotated[list[Ip], Field(min_length=1, max_length=4)] | None = None
    resolve: Annotated[list[ResolveIn], Field(min_length=1, max_length=4)] | None = None
    dohUrl: HttpsUrl | None = None  # libcurl only speaks DoH over https
    dohInsecure: bool | None = None
    tlsVersion: Version | None = None
    tlsMaxVersion: Version | None = None
    proxy: ProxyIn | None = None
    proxyHeaders: ProxyHeaders = None
    proxyInsecure: bool | None = None
    proxyHttpVersion: Literal["1.0", "1.1"] = "1.1"
    proxyAuthNtlm: CredentialsIn | None = None
    proxyAuthBasic: CredentialsIn | None = None
    proxyAuthDigest: CredentialsIn | None = None
    haProxyClientIp: Ip | None = None
    haProxyProtocol: bool | None = None
    retryPolicy: Annotated[
        RetryPolicyIn | None,
        Field(
            description="Cloud Tasks' retry policy; not combinable with retry, retryAt, "
            "retryInterval or retryExponential"
        ),
    ] = None
    retryOn: Annotated[
        StatusList,
        Field(description="statuses retried besides 5xx, 408, 429 and connection errors"),
    ] = Field(default_factory=list)
    noRetryOn: Annotated[StatusList, Field(description="statuses never retried")] = Field(
        default_factory=list
    )
    priority: Annotated[
        int,
        Field(
            ge=-100,
            le=100,
            description="among tasks due together or held by a limit, higher starts first",
        ),
    ] = 0
    deduplicationId: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=128,
            description="a repeat within DEDUP_WINDOW_S returns the existing task",
        ),
    ] = None
    flowControl: Annotated[
        FlowControlIn | None,
        Field(description="the owner's flow-control key this task counts against"),
    ] = None


Metadata = Annotated[
    dict[RecordKey, Annotated[str, StringConstraints(min_length=1, max_length=512)]],
    Field(min_length=1, max_length=8),
]


class CallbackIn(HttpRequestIn):
    """A call the server makes with a JSON body of its own (a callback, an alert)."""

    method: Method = "POST"

    @model_validator(mode="after")
    def _no_body(self) -> CallbackIn:
        if self.data is not None:
            raise PydanticCustomError("callback_data", "The server supplies the body")
        return self


class TaskIn(Strict):
    httpRequest: HttpRequestIn
    config: ConfigIn = Field(default_factory=ConfigIn)
    metadata: Metadata | None = None
    onSuccess: CallbackIn | None = None
    onFailure: CallbackIn | None = None


def _body_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "form"
    if isinstance(value, dict):
        return "record"
    return None


class BatchHttpRequestIn(HttpRequestIn):
    """``HttpRequestIn`` whose ``data`` is validated only against the kind of body its
    JSON type names, where the plain union tries every kind and builds an error for each
    that fails (about half the cost of validating a plain request). It accepts exactly
    the same values, with other errors: on any error a batch is validated again with
    ``HttpRequestIn`` to name the bad fields as a registration of its own would."""

    data: (
        Annotated[
            Annotated[Annotated[str, StringConstraints(min_length=1)], Tag("text")]
            | Annotated[
                Annotated[list[FormFieldIn], Field(min_length=1, max_length=64)], Tag("form")
            ]
            | Annotated[JsonRecord, Tag("record")],
            Discriminator(_body_kind),
        ]
        | None
    ) = None


class BatchItemIn(Strict):
    """``TaskIn`` with its configuration as parsed JSON, not yet validated: the items of a
    batch mostly repeat a few configurations, and each distinct one is validated once
    (api/batch.py). A value this accepts is a ``TaskIn`` once its configuration is valid.
    """

    httpRequest: BatchHttpRequestIn
    config: dict[str, Any] = Field(default_factory=dict)
    metadata: Metadata | None = None
    onSuccess: CallbackIn | None = None
    onFailure: CallbackIn | None = None


# -- owners and queries -----------------------------------------------------------------

OwnerName = Annotated[
    str,
    StringConstraints(min_length=5, max_length=32),
    AfterValidator(lambda v: _owner_name(v)),
]


def _owner_name(value: str) -> str:
    """5 to 32 characters (checked by the length constraint) of a-z, 0-9 and single
    hyphens, starting with a letter; the message names the rule the value breaks."""
    if re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", value):
        return value
    other = sorted({ch for ch in value if not (ch.isascii() and (ch.isalnum() or ch == "-"))})
    upper = sorted({ch for ch in value if ch.isascii() and ch.isupper()})
    if other or upper:
        found = ", ".join(repr(ch) for ch in [*upper, *other])
        problem = f"Use only lowercase letters a-z, digits and hyphens (found {found})"
    elif value[:1].isdigit():
        problem = "String cannot begin with a number"
    elif value.startswith("-") or value.endswith("-"):
        problem = "String cannot start or end with a hyphen"
    else:
        problem = "String cannot contain consecutive hyphens"
    raise PydanticCustomError("owner_name", problem)


class OwnerIn(Strict):
    name: OwnerName


def _digits(low: int, high: int) -> Any:
    return Annotated[
        str, StringConstraints(pattern=r"^\d{1,4}$"), AfterValidator(int), Field(ge=low, le=high)
    ]


class ListQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    limit: Annotated[int, BeforeValidator(lambda v: query_int(v, 1, 1000))] = 10
    offset: Annotated[int, BeforeValidator(lambda v: query_int(v, 0, 1_000_000))] = 0
    order: Literal["createdAt", "estimateEndAt", "estimateExecutionAt"] = "createdAt"
    sort: Annotated[Literal["asc", "desc"], BeforeValidator(_lower)] = "asc"
    state: (
        Annotated[
            Literal["RUNNING", "PAUSED", "SUCCESS", "ERROR", "REVOKED"], BeforeValidator(_upper)
        ]
        | None
    ) = None


def query_int(value: Any, low: int, high: int) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,7}", value):
        raise PydanticCustomError("query_int", "Expected a whole number")
    number = int(value)
    if not low <= number <= high:
        raise PydanticCustomError(
            "query_int", "Number must be between {low} and {high}", {"low": low, "high": high}
        )
    return number


def parse_datetime_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)
