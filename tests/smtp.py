"""A real SMTP server for tests: aiosmtpd in a thread of its own, on a free port, keeping every message.

It can be told to refuse (a 4xx or 5xx at RCPT or DATA), to require a login, to
offer STARTTLS or to speak TLS from the start, with a self-signed certificate
made here (``cryptography``) for 127.0.0.1 and localhost. Clients trust it through
``SSL_CERT_FILE`` (``Tls.trust``), as an operator trusts a private CA.

    from tests.smtp import smtp_servers, tls  # fixtures; import them into the test module
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool            # the session was encrypted (STARTTLS or TLS from the start)
    login: str | None    # who logged in, if anyone
    peer: Any = None     # the client's (host, port): one per SMTP session


@dataclass
class Keeper:
    """The aiosmtpd handler: keeps every message; answers ``refuse_rcpt`` / ``refuse_data`` instead when set."""

    messages: list[Received] = field(default_factory=list)
    refuse_rcpt: str | None = None   # e.g. "550 5.1.1 no such user", "451 4.3.0 try again later"
    refuse_data: str | None = None
    refuse_for: dict[str, str] = field(default_factory=dict)  # one recipient's answer, e.g. {"ben@x": "550 ..."}
    logins: dict[str, str] = field(default_factory=dict)  # user -> password the server accepts
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if self.refuse_rcpt or address in self.refuse_for:
            return self.refuse_rcpt or self.refuse_for[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse_data:
            return self.refuse_data
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        with self.lock:  # the server runs in a thread of its own
            self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), message,
                                          _encrypted(server, session), login, session.peer))
        return "250 2.0.0 Message accepted for delivery"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and self.logins.get(auth_data.login.decode()) == auth_data.password.decode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data)  # kept on the session when it succeeds

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.messages)


def _encrypted(server: SMTP, session: Session) -> bool:
    # aiosmtpd sets session.ssl after STARTTLS only; a connection that was TLS from the start shows on its transport
    transport = server.transport
    return session.ssl is not None or (transport is not None and transport.get_extra_info("sslcontext") is not None)


@dataclass
class Tls:
    """A self-signed certificate for 127.0.0.1 and localhost, and the files a server and a client need."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def trust(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Clients of this process trust the certificate (OpenSSL reads SSL_CERT_FILE when a context loads its defaults)."""
        monkeypatch.setenv("SSL_CERT_FILE", str(self.cert_file))


def make_certificate(folder: Path) -> Tls:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tls = Tls(folder / "smtp-cert.pem", folder / "smtp-key.pem")
    tls.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return tls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1:``port``, started and stopped by the test (stopped: connections are refused).

    ``mode``: "plain", "starttls" (offered), "smtps" (TLS from the start). ``logins``:
    require AUTH, accepting these user/password pairs (offered only over TLS).
    """

    def __init__(self, tls: Tls, mode: str = "plain", logins: dict[str, str] | None = None) -> None:
        self.keeper = Keeper(logins=dict(logins or {}))
        self.port = free_port()
        self.mode = mode
        self.tls = tls
        self.controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"{'smtps' if self.mode == 'smtps' else 'smtp'}://127.0.0.1:{self.port}"

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {}
        if self.mode == "starttls":
            kwargs["tls_context"] = self.tls.server_context()
        if self.mode == "smtps":
            kwargs["ssl_context"] = self.tls.server_context()
        if self.keeper.logins:
            kwargs.update(authenticator=self.keeper.authenticate, auth_required=True)
        self.controller = Controller(self.keeper, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def received(self) -> list[Received]:
        return self.keeper.received()


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return make_certificate(tmp_path)


class SmtpServers:
    """Makes servers for one test and stops them all at its end."""

    def __init__(self, tls: Tls) -> None:
        self.tls = tls
        self.made: list[SmtpServer] = []

    def __call__(self, mode: str = "plain", logins: dict[str, str] | None = None, start: bool = True) -> SmtpServer:
        server = SmtpServer(self.tls, mode, logins)
        self.made.append(server)
        return server.start() if start else server


@pytest.fixture
def smtp_servers(tls: Tls) -> Iterator[SmtpServers]:
    """``smtp_servers(mode, logins, start)``: a server of the test's own (see SmtpServer)."""
    servers = SmtpServers(tls)
    try:
        yield servers
    finally:
        for server in servers.made:
            server.stop()
