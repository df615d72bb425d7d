"""Real HTTP(S) targets on 127.0.0.1 for tests that send requests out.

``TargetServer`` records every request that arrives (with its monotonic arrival time) and
answers from per-path routes; ``ForwardProxy`` relays absolute-URI requests; ``TlsMaterial``
issues trustme certificates for server and client. All bind port 0 and run on the test's
own event loop, so nothing is shared between tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http
import re
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

import trustme
from cryptography.hazmat.primitives import serialization

HOST = "127.0.0.1"
_CHUNK = 64 * 1024
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "transfer-encoding",
        "content-length",
        "expect",
        "te",
        "upgrade",
    }
)


@dataclass(frozen=True)
class Arrival:
    """One request as the target saw it."""

    method: str
    target: str  # the raw request-target: origin form, or absolute form at a proxy
    version: str  # e.g. "HTTP/1.1"; "HTTP/2.0" for an HTTP/2 connection preface
    headers: tuple[tuple[str, str], ...]
    body: bytes
    arrived_at: float  # time.monotonic()
    peer_port: int  # the client's source port: equal ports mean a reused connection
    client_cert: dict[str, Any] | None = None
    proxy_preamble: str | None = None  # the HAProxy "PROXY ..." line, if one came first

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.target).query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass(frozen=True)
class Reply:
    """What a route answers. ``hang`` holds the request until ``release()`` or close;
    ``gate`` holds the answer until the test sets that event; ``stream_bytes`` sends that
    many body bytes, chunked, instead of ``body``."""

    status: int = 200
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    hang: bool = False
    stream_bytes: int = 0
    gate: asyncio.Event | None = None


Handler = Callable[[Arrival], Reply]


def redirect(location: str, status: int = 302) -> Reply:
    return Reply(status, b"", (("Location", location),))


def basic_auth(username: str, password: str, ok: Reply | None = None) -> Handler:
    """A route that answers ``ok`` only to the right Basic credentials, 401 otherwise."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()

    def handle(arrival: Arrival) -> Reply:
        if arrival.header("authorization") == f"Basic {token}":
            return ok or Reply(200, b"welcome")
        return Reply(401, b"who are you", (("WWW-Authenticate", 'Basic realm="targets"'),))

    return handle


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _auth_params(value: str) -> dict[str, str]:
    pairs = re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', value)
    return {key: quoted or bare for key, quoted, bare in pairs}


def digest_auth(username: str, password: str, ok: Reply | None = None) -> Handler:
    """A route checking RFC 7616 Digest (MD5, qop=auth) credentials, 401 otherwise."""
    realm, nonce = "targets", secrets.token_hex(8)

    def is_valid(arrival: Arrival) -> bool:
        value = arrival.header("authorization") or ""
        if not value.startswith("Digest "):
            return False
        p = _auth_params(value)
        ha1 = _md5(f"{username}:{realm}:{password}")
        ha2 = _md5(f"{arrival.method}:{p.get('uri', '')}")
        expected = _md5(f"{ha1}:{nonce}:{p.get('nc')}:{p.get('cnonce')}:{p.get('qop')}:{ha2}")
        return p.get("username") == username and p.get("response") == expected

    def handle(arrival: Arrival) -> Reply:
        if is_valid(arrival):
            return ok or Reply(200, b"welcome")
        challenge = f'Digest realm="{realm}", nonce="{nonce}", qop="auth", algorithm=MD5'
        return Reply(401, b"who are you", (("WWW-Authenticate", challenge),))

    return handle


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    preamble: str | None


async def _read_line(reader: asyncio.StreamReader) -> str | None:
    line = await reader.readline()
    return line.decode("latin-1").rstrip("\r\n") if line else None


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    names = {n.lower(): v for n, v in headers}
    if names.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while (size_line := await _read_line(reader)) not in (None, ""):
            size = int(size_line.split(";")[0], 16)
            if size == 0:
                while await _read_line(reader):  # trailers up to the blank line
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return bytes(body)
    length = int(names.get("content-length", "0"))
    return await reader.readexactly(length) if length else b""


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> _Request | None:
    """Read one HTTP/1.x request (or an HTTP/2 preface); None at end of connection."""
    line = await _read_line(reader)
    preamble = None
    if line is not None and line.startswith("PROXY "):
        preamble, line = line, await _read_line(reader)
    while line == "":  # tolerate stray CRLF between requests
        line = await _read_line(reader)
    if line is None:
        return None
    method, _, rest = line.partition(" ")
    target, _, version = rest.rpartition(" ")
    headers: list[tuple[str, str]] = []
    while header := await _read_line(reader):
        name, _, value = header.partition(":")
        headers.append((name.strip(), value.strip()))
    if method == "PRI" and version == "HTTP/2.0":
        return _Request(method, target, version, headers, b"", preamble)
    if any(n.lower() == "expect" and v.lower() == "100-continue" for n, v in headers):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await _read_body(reader, headers)
    return _Request(method, target, version, headers, body, preamble)


def _arrival(request: _Request, writer: asyncio.StreamWriter) -> Arrival:
    peer = writer.get_extra_info("peername") or (HOST, 0)
    return Arrival(
        method=request.method,
        target=request.target,
        version=request.version,
        headers=tuple(request.headers),
        body=request.body,
        arrived_at=time.monotonic(),
        peer_port=int(peer[1]),
        client_cert=writer.get_extra_info("peercert"),
        proxy_preamble=request.preamble,
    )


def _wants_close(arrival: Arrival) -> bool:
    connection = (arrival.header("connection") or "").lower()
    return connection == "close" or (arrival.version == "HTTP/1.0" and connection != "keep-alive")


def _head(reply: Reply, length: int | None, close: bool) -> bytes:
    try:
        reason = http.HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Whatever"
    lines = [f"HTTP/1.1 {reply.status} {reason}", *(f"{n}: {v}" for n, v in reply.headers)]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Listener:
    """A TCP (optionally TLS) listener on 127.0.0.1:0 whose connections end at close."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._accept, HOST, 0, ssl=self.tls, ssl_shutdown_timeout=1.0 if self.tls else None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Abort rather than cancel: each handler sees its connection end and returns normally
        # (asyncio logs connection handlers that end cancelled).
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            _, stuck = await asyncio.wait(list(self._connections), timeout=5.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await self.serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            pass  # the client went away or spoke nonsense; the test asserts on what it sees
        finally:
            del self._connections[task]
            await _close_writer(writer)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout=2.0)
    except (OSError, ssl.SSLError, TimeoutError):
        writer.transport.abort()


class TargetServer(_Listener):
    """An HTTP/1.1 target that records arrivals and answers from routes.

    Unknown paths answer 404. ``url(path)`` gives the address; ``arrivals`` lists requests in
    arrival order; ``sent_bytes[path]`` counts body bytes written by streaming replies.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(tls)
        self.arrivals: list[Arrival] = []
        self.sent_bytes: dict[str, int] = {}
        self._routes: dict[str, Reply | Handler] = {}
        self._released = asyncio.Event()

    def url(self, path: str = "/", host: str = HOST) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def route(self, path: str, reply: Reply | Handler) -> None:
        self._routes[path] = reply

    def arrivals_at(self, path: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.path == path]

    def release(self) -> None:
        """Let every hanging request go: its connection is closed without an answer."""
        self._released.set()

    async def close(self) -> None:
        self.release()
        await super().close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await _read_request(reader, writer)) is not None:
            arrival = _arrival(request, writer)
            self.arrivals.append(arrival)
            if request.method == "PRI":
                return  # an HTTP/2 client; recorded, but this target only speaks HTTP/1.1
            if not await self._answer(arrival, writer):
                return

    async def _answer(self, arrival: Arrival, writer: asyncio.StreamWriter) -> bool:
        """Write the route's reply; False when the connection must end."""
        route = self._routes.get(arrival.path, Reply(404, b"not found"))
        reply = route if isinstance(route, Reply) else route(arrival)
        if reply.hang:
            await self._released.wait()
            return False
        if reply.gate is not None:
            await reply.gate.wait()
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        close = _wants_close(arrival)
        if reply.stream_bytes:
            await self._stream(arrival.path, reply, writer, close)
        else:
            writer.write(_head(reply, len(reply.body), close) + reply.body)
            await writer.drain()
        return not close

    async def _stream(
        self, path: str, reply: Reply, writer: asyncio.StreamWriter, close: bool
    ) -> None:
        writer.write(_head(reply, None, close))
        remaining = reply.stream_bytes
        self.sent_bytes[path] = 0
        while remaining > 0:
            size = min(_CHUNK, remaining)
            writer.write(f"{size:x}\r\n".encode() + b"x" * size + b"\r\n")
            await writer.drain()
            self.sent_bytes[path] += size
            remaining -= size
        writer.write(b"0\r\n\r\n")
        await writer.drain()


class ForwardProxy(_Listener):
    """A plain-HTTP forward proxy: relays absolute-URI requests upstream.

    Records what it received in ``arrivals``; CONNECT is recorded and answered 501. With
    ``credentials`` it demands Basic proxy authentication (407 otherwise).
    """

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        super().__init__(None)
        self.arrivals: list[Arrival] = []
        self._token = None
        if credentials is not None:
            self._token = base64.b64encode(":".join(credentials).encode()).decode()

    @property
    def host(self) -> str:
        return HOST

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader, writer)
        if request is None:
            return
        arrival = _arrival(request, writer)
        self.arrivals.append(arrival)
        if self._token and arrival.header("proxy-authorization") != f"Basic {self._token}":
            reply = Reply(407, b"proxy says no", (("Proxy-Authenticate", 'Basic realm="p"'),))
        elif arrival.method == "CONNECT":
            reply = Reply(501, b"no tunnels here")
        else:
            writer.write(await _relay(arrival))
            await writer.drain()
            return
        writer.write(_head(reply, len(reply.body), close=True) + reply.body)
        await writer.drain()


async def _relay(arrival: Arrival) -> bytes:
    """Send ``arrival`` to its origin with Connection: close and return the raw response."""
    url = urlsplit(arrival.target)
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
    try:
        target = url.path + (f"?{url.query}" if url.query else "")
        headers = [(n, v) for n, v in arrival.headers if n.lower() not in _HOP_BY_HOP]
        headers += [("Content-Length", str(len(arrival.body))), ("Connection", "close")]
        head = [f"{arrival.method} {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers)]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + arrival.body)
        await writer.drain()
        return await reader.read()
    finally:
        await _close_writer(writer)


@dataclass
class TlsMaterial:
    """A private CA and what tests need from it: server contexts and client certificates."""

    ca: trustme.CA = field(default_factory=trustme.CA)

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def server_context(self, *hostnames: str, require_client_cert: bool = False) -> ssl.SSLContext:
        """A server context for ``hostnames`` (default 127.0.0.1 and localhost), HTTP/1.1."""
        leaf = self.ca.issue_cert(*(hostnames or (HOST, "localhost")))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(context)
        context.set_alpn_protocols(["http/1.1"])
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(context)
        return context

    def client_cert(self, name: str = "client.test", password: bytes | None = None) -> ClientPem:
        """A client certificate and its key as PEM; the key encrypted when given a password."""
        leaf = self.ca.issue_cert(name)
        key_pem = leaf.private_key_pem.bytes()
        if password is not None:
            key = serialization.load_pem_private_key(key_pem, password=None)
            key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password),
            )
        return ClientPem(leaf.cert_chain_pems[0].bytes(), key_pem)


@dataclass(frozen=True)
class ClientPem:
    cert: bytes
    key: bytes


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """Yield a port that refuses connections: bound (so nobody else gets it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]
