"""A real SMTP server for alert tests: aiosmtpd on 127.0.0.1 and a free port, in its own
thread (aiosmtpd's Controller), recording every message it accepts; optionally with
STARTTLS (a trustme certificate) and login required."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.support.process import free_port


@dataclass(frozen=True)
class Received:
    """One accepted message as the server saw it."""

    sender: str
    recipients: tuple[str, ...]
    raw: bytes
    over_tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        parsed: EmailMessage = email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[assignment]
        return parsed

    @property
    def text(self) -> str:
        body = self.message.get_body(("plain",))
        assert body is not None
        content: str = body.get_content()
        return content


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        data = session.auth_data
        login = data.login.decode() if isinstance(data, LoginPassword) else None
        self._server.record(
            Received(
                sender=str(envelope.mail_from),
                recipients=tuple(envelope.rcpt_tos),
                raw=bytes(envelope.original_content or b""),
                over_tls=session.ssl is not None,
                login=login,
            )
        )
        return "250 Message accepted for delivery"


class SmtpServer:
    """``with SmtpServer() as smtp:`` — ``smtp.port``, ``smtp.messages``. With ``tls`` the
    server offers (and requires) STARTTLS; with ``user``/``password`` it requires login."""

    def __init__(
        self,
        tls: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.port = free_port()
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        options: dict[str, Any] = {}
        if tls is not None:
            options.update(tls_context=tls, require_starttls=True)
        if user is not None:
            options.update(authenticator=self._authenticator(user, password or ""))
            options.update(auth_required=True, auth_require_tls=tls is not None)
        self._controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port, **options
        )

    @staticmethod
    def _authenticator(user: str, password: str) -> Any:
        def check(
            server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and data.login == user.encode()
                and data.password == password.encode()
            )
            return AuthResult(success=ok, handled=False, auth_data=data)

        return check

    def record(self, received: Received) -> None:
        with self._lock:
            self.messages.append(received)

    def __enter__(self) -> Self:
        self._controller.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._controller.stop()
