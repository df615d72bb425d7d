"""The e-mail channel: one message over SMTP with aiosmtplib (plain, STARTTLS or TLS)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    user: str | None = None
    password: str | None = None
    tls: str = "starttls"  # none, starttls or tls (implicit TLS, usually port 465)
    ca_file: str | None = None  # a CA bundle to trust instead of the system's
    timeout_s: float = 30.0


class SmtpMailer:
    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self._settings.ca_file)

    async def send(self, to: tuple[str, ...], subject: str, text: str) -> None:
        """Send one plain-text mail; raises aiosmtplib.SMTPException or OSError."""
        s = self._settings
        message = EmailMessage()
        message["From"] = s.sender
        message["To"] = ", ".join(to)
        message["Subject"] = subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain=s.sender.rpartition("@")[2] or None)
        message.set_content(text)
        await aiosmtplib.send(
            message,
            hostname=s.host,
            port=s.port,
            username=s.user,
            password=s.password,
            use_tls=s.tls == "tls",
            start_tls=s.tls == "starttls",
            tls_context=None if s.tls == "none" else self._tls_context(),
            timeout=s.timeout_s,
        )
