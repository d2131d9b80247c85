"""E-mail: one template per notification kind, digests, and the SMTP sender behind the ledger.

The way mail flows:

- ``enqueue_now``: a notification is rendered (``render``) and enqueued in the
  delivery ledger as one e-mail.
- ``hold``: a notification waits for its recipient's digest window instead;
  ``forget`` drops it when its in-app copy is read first; ``digests`` (a
  background loop) gathers a window's items at its end into one e-mail in the
  ledger.
- ``EmailSender``: the ledger hands it one delivery at a time (rules'
  ``send_email`` requests too, sent as they are) and it speaks SMTP.

Digest windows (``parse_window``), in the recipient's IANA time zone:

- ``hourly``: ends at every full hour of the zone's clock;
- ``daily@HH:MM``: ends once a day at HH:MM (00:00 to 23:59) on the zone's clock.
  On the day clocks go forward a time inside the gap comes that much later
  (02:30 in a 02:00→03:00 gap is 03:30); on the day they go back a repeated
  time is taken at its first occurrence (PEP 495, as zoneinfo resolves them).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from email.message import EmailMessage as MimeMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiosmtplib
from jinja2 import ChainableUndefined, Environment, FileSystemLoader, select_autoescape
from sqlalchemy import CursorResult, Index, String, Text, UniqueConstraint, Uuid, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from schemas.common import Severity
from schemas.notifications import EmailMessage
from services.notifier import ledger
from services.notifier.credentials import credential_value
from services.notifier.errors import NotifierError
from services.notifier.events import EVENT_TYPES
from services.notifier.settings import NotifierConfig, notifier_config
from services.notifier.state import NotifierState, state_of
from services.notifier.store import Base
from storeops.db import BigIntPK, UTCDateTime, insert_ignore, table_of
from storeops.service import Runtime

log = logging.getLogger(__name__)

# --- templates ------------------------------------------------------------------------------

TEMPLATES = Path(__file__).parent / "templates"
GENERIC = "generic"
DIGEST = "digest"
_env = Environment(
    loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"], default=False),
    undefined=ChainableUndefined,  # an event without some field renders it empty rather than failing the e-mail
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
)


def render(kind: str, context: dict[str, Any]) -> tuple[str, str, str]:
    """(subject, text, html) for a notification of ``kind`` (one of events.EVENT_TYPES, else the generic template).

    ``context``: ``title`` and ``body`` (the notification's), and where known ``severity``,
    ``link`` (where the reader acts), ``entity``, ``recipient``, ``assignee``, ``payload``.
    """
    name = kind if kind in EVENT_TYPES or kind == DIGEST else GENERIC
    values = {"kind": kind, "title": "", "body": "", "severity": None, "link": None, **context}
    text = _env.get_template(f"{name}.txt")
    subject = "".join(text.blocks["subject"](text.new_context(values)))
    html = _env.get_template(f"{name}.html").render(values)
    # a header may not hold a line break; a long title is cut where EmailMessage allows
    return " ".join(subject.split())[:300], text.render(values), html


async def enqueue_now(session: AsyncSession, *, address: str, recipient: str, kind: str, notification_id: uuid.UUID,
                      context: dict[str, Any], now: datetime, route: str | None = None) -> bool:
    """Render one notification and enqueue it for ``address``; False when it was enqueued already.

    ``route``: ``ledger.smtp_route(config.smtp_url)`` (the ledger tracks a server's health by it).
    """
    subject, text, html = render(kind, context)
    message = EmailMessage(channel="email", to=[address], subject=subject, text=text, html=html)
    payload = message.model_dump(mode="json", exclude={"channel"})
    return await ledger.enqueue(session, channel="email", key=f"email:{notification_id}:{address}",
                                route=route or ledger.smtp_route(None), payload=payload, now=now, recipient=recipient)


# --- digest windows (pure) ------------------------------------------------------------------

_DAILY = re.compile(r"daily@([01]\d|2[0-3]):([0-5]\d)")
WINDOW_FORMS = "'hourly' or 'daily@HH:MM' (24-hour clock, e.g. daily@08:30)"


@dataclass(frozen=True)
class Window:
    """A digest window: ``at`` is None for hourly, the local time of day for daily."""

    zone: ZoneInfo
    at: clock | None = None

    def end_after(self, now: datetime) -> datetime:
        """The first end of this window strictly after ``now`` (UTC)."""
        local = now.astimezone(self.zone)
        if self.at is None:
            hour = local.replace(minute=0, second=0, microsecond=0)  # keeps fold: a repeated hour is itself
            end = (hour.astimezone(UTC) + timedelta(hours=1)).astimezone(self.zone)
            # where clocks move by half an hour (Australia/Lord_Howe) an hour later may be off the full hour: the
            # full hour then lies in the gap, and zoneinfo puts it at the instant the clocks jump
            return end.replace(minute=0).astimezone(UTC)
        day = local.date()
        while True:
            end = datetime.combine(day, self.at, tzinfo=self.zone).astimezone(UTC)
            if end > now:
                return end
            day += timedelta(days=1)


def parse_window(window: str, tz: str) -> Window:
    """The digest window ``window`` (see WINDOW_FORMS) in IANA zone ``tz``; ValueError saying what is wrong."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r}: an IANA name is expected, e.g. Europe/Berlin or UTC") from exc
    if window == "hourly":
        return Window(zone)
    daily = _DAILY.fullmatch(window)
    if daily is None:
        raise ValueError(f"unknown digest window {window!r}: expected {WINDOW_FORMS}")
    return Window(zone, clock(int(daily[1]), int(daily[2])))


# --- digests --------------------------------------------------------------------------------

DIGEST_POLL_SECONDS = 15.0
DIGEST_TOP = 10
_UNRANKED = len(Severity)


class HeldEmailRow(Base):
    """A notification held for its recipient's digest; ``state``: held, sent (in digest ``digest_key``), dropped (read)."""

    __tablename__ = "email_digest_items"
    __table_args__ = (
        UniqueConstraint("notification_id", "address", name="uq_email_digest_items_notification_address"),
        Index("ix_email_digest_items_state_window_end", "state", "window_end"),  # the loop's look for due windows
    )

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    recipient: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(320))
    window: Mapped[str] = mapped_column(String(20))
    tz: Mapped[str] = mapped_column(String(64))
    notification_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    kind: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(400))
    body: Mapped[str] = mapped_column(Text)
    severity: Mapped[str | None] = mapped_column(String(10))
    link: Mapped[str | None] = mapped_column(String(2000))
    held_at: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(10))
    digest_key: Mapped[str | None] = mapped_column(String(700))


async def hold(session: AsyncSession, *, recipient: str, address: str, window: str, tz: str, notification_id: uuid.UUID,
               kind: str, title: str, body: str, severity: str | None, now: datetime, link: str | None = None) -> None:
    """Hold a notification for the digest of ``window`` in ``tz`` (ValueError when either is not valid).

    Holding one again (a redelivered change) is a no-op.
    """
    end = parse_window(window, tz).end_after(now)
    await insert_ignore(session, table_of(HeldEmailRow), [{
        "recipient": recipient, "address": address, "window": window, "tz": tz, "notification_id": notification_id,
        "kind": kind, "title": title[:400], "body": body, "severity": severity, "link": link, "held_at": now,
        "window_end": end, "state": "held", "digest_key": None,
    }])


async def forget(session: AsyncSession, notification_ids: Sequence[uuid.UUID], *, enabled: bool = True) -> int:
    """Drop the held items of notifications whose in-app copy was read; the number dropped.

    ``enabled``: the notifier's ``digest_drops_read`` (False: read items stay in the digest).
    """
    if not enabled or not notification_ids:
        return 0
    result = await session.execute(
        update(HeldEmailRow).where(HeldEmailRow.notification_id.in_(set(notification_ids)), HeldEmailRow.state == "held")
        .values(state="dropped"))
    assert isinstance(result, CursorResult)  # an UPDATE's result
    return result.rowcount


def digest_key(recipient: str, address: str, window_end: datetime) -> str:
    return f"digest:{recipient}:{address}:{window_end.isoformat()}"


def digest_context(items: Sequence[HeldEmailRow], *, recipient: str, public_url: str) -> dict[str, Any]:
    """What the digest template shows: counts by severity, the top items (by severity, then newest), the rest's count."""
    def rank(severity: str | None) -> int:
        try:
            return Severity(severity or "").rank
        except ValueError:
            return _UNRANKED  # a severity of another vocabulary, or none, after Low

    counts = Counter(item.severity for item in items)
    ordered = sorted(items, key=lambda i: (rank(i.severity), -i.held_at.timestamp(), i.seq))
    feed = f"{public_url.rstrip('/')}/v1/notifications?recipient={quote(recipient, safe='')}"
    return {
        "recipient": recipient, "total": len(items), "link": feed,
        "counts": [(severity or "no severity", n) for severity, n in sorted(counts.items(), key=lambda c: rank(c[0]))],
        "top": [{"title": i.title, "body": i.body, "severity": i.severity, "kind": i.kind, "link": i.link or feed,
                 "held_at": i.held_at} for i in ordered[:DIGEST_TOP]],
        "more": max(0, len(items) - DIGEST_TOP),
    }


async def gather(session: AsyncSession, *, recipient: str, address: str, window_end: datetime, now: datetime,
                 config: NotifierConfig) -> bool:
    """Gather one recipient's window into a digest in the ledger; True when one was enqueued.

    The claim (held → sent) and the enqueue share the caller's transaction. A digest
    under this key that exists already (an item held while its window was being sent)
    moves the late items to their next window instead: nothing is sent twice or lost.
    """
    key = digest_key(recipient, address, window_end)
    claimed = list((await session.scalars(
        update(HeldEmailRow)
        .where(HeldEmailRow.state == "held", HeldEmailRow.recipient == recipient, HeldEmailRow.address == address,
               HeldEmailRow.window_end == window_end)
        .values(state="sent", digest_key=key).returning(HeldEmailRow)
        .execution_options(synchronize_session=False))).all())
    if not claimed:
        return False  # read meanwhile, or another process took the window
    subject, text, html = render(DIGEST, digest_context(claimed, recipient=recipient, public_url=config.public_url))
    payload = {"to": [address], "subject": subject, "text": text, "html": html}
    if await ledger.enqueue(session, channel="email", key=key, route=ledger.smtp_route(config.smtp_url), payload=payload,
                            now=now, recipient=recipient):
        return True
    for item in claimed:
        later = parse_window(item.window, item.tz).end_after(now)
        await session.execute(update(HeldEmailRow).where(HeldEmailRow.seq == item.seq)
                              .values(state="held", digest_key=None, window_end=later))
    return False


async def send_due_digests(rt: Runtime[Any], now: datetime, limit: int = 100) -> int:
    """Gather every window that has ended by ``now``, one transaction per digest; the number enqueued."""
    config = notifier_config(rt.settings)
    async with rt.sessions() as session:
        due = (await session.execute(
            select(HeldEmailRow.recipient, HeldEmailRow.address, HeldEmailRow.window_end).distinct()
            .where(HeldEmailRow.state == "held", HeldEmailRow.window_end <= now).limit(limit))).all()
    sent = 0
    for recipient, address, window_end in due:
        async with rt.sessions.begin() as session:
            sent += await gather(session, recipient=recipient, address=address, window_end=window_end, now=now,
                                 config=config)
    if sent:
        state_of(rt).deliveries_due.set()
    return sent


async def digests(rt: Runtime[NotifierState]) -> None:
    """The digest loop: every DIGEST_POLL_SECONDS, send the digests whose window has ended."""
    failing = False
    while True:
        try:
            await send_due_digests(rt, datetime.now(UTC))
            failing = False
        except (DBAPIError, OSError) as exc:
            if not ledger.is_outage(exc):
                raise  # a bug: the process ends and its supervisor restarts it
            if not failing:  # said once when it starts failing, not on every poll
                log.warning("digests: the database does not answer; trying again", exc_info=True)
            failing = True
        await asyncio.sleep(DIGEST_POLL_SECONDS)


# --- the SMTP sender ------------------------------------------------------------------------

SMTP_IDLE_SECONDS = 20.0  # below the idle timeouts servers apply (Postfix: 300 s; many relays: 60 s)
NO_SERVER = "no SMTP server configured (set STOREOPS_NOTIFIER__SMTP_URL); the e-mail waits"


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    implicit_tls: bool

    @property
    def route(self) -> str:
        return f"smtp:{self.host}:{self.port}"


def parse_smtp_url(url: str) -> SmtpServer:
    """smtp://host[:port] (port 587; STARTTLS when offered) or smtps://host[:port] (port 465; TLS from the start)."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(f"expected smtp://host:port or smtps://host:port, not {parts.scheme or 'no'} scheme")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the login comes from STOREOPS_NOTIFIER__SMTP_CREDENTIAL, not from the URL")
    if not parts.hostname:
        raise ValueError("no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from exc
    implicit = parts.scheme == "smtps"
    return SmtpServer(parts.hostname, port or (465 if implicit else 587), implicit)  # the ports ledger.smtp_route names


def compose(payload: dict[str, Any], *, message_id: str, mail_from: str, reply_to: str | None, now: datetime) -> MimeMessage:
    """The MIME message of an e-mail payload (to, subject, text, html): multipart/alternative when it has both parts."""
    message = MimeMessage()
    message["From"] = mail_from
    message["To"] = ", ".join(payload["to"])
    if reply_to:
        message["Reply-To"] = reply_to
    message["Subject"] = payload["subject"]
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: out-of-office replies stay away
    text, html = payload.get("text"), payload.get("html")
    if text is not None:
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
    else:
        message.set_content(html or "", subtype="html")
    return message


def message_id(delivery_id: uuid.UUID, mail_from: str) -> str:
    """The same on every attempt of a delivery, so a resend after a crash is recognisable as the same e-mail."""
    domain = parseaddr(mail_from)[1].rpartition("@")[2] or "storeops.invalid"
    return f"<{delivery_id}@{domain}>"


class _Refused(Exception):
    """The attempt cannot start (configuration, login); ``attempt`` says how it ended."""

    def __init__(self, attempt: ledger.Attempt) -> None:
        super().__init__(attempt.detail)
        self.attempt = attempt


@dataclass
class _Idle:
    client: aiosmtplib.SMTP
    since: float


class EmailSender:
    """The ledger's sender for channel "email". At most ``smtp_sessions`` SMTP sessions at once (relays
    limit a client's connections: Postfix to 50 by default), each kept open and used again for
    ``SMTP_IDLE_SECONDS`` (a connection, TLS and the login per message was most of an e-mail's time);
    a kept one the server has closed meanwhile is replaced once, before anything of the message was
    sent. A session that failed is closed, never used again."""

    def __init__(self, rt: Runtime[Any], timeout: float | None = None) -> None:
        self.rt = rt
        self.config = notifier_config(rt.settings)
        self.timeout = timeout if timeout is not None else self.config.smtp_timeout_seconds
        self.idle: dict[tuple[SmtpServer, str | None, str | None], list[_Idle]] = {}
        self.sessions = asyncio.Semaphore(self.config.smtp_sessions)

    async def close(self) -> None:
        kept, self.idle = [i for idle in self.idle.values() for i in idle], {}
        for item in kept:
            await _quit(item.client)

    async def send(self, delivery: ledger.DeliveryRow) -> ledger.Attempt:
        started = time.monotonic()
        try:
            async with self.sessions:
                attempt = await self._send(delivery)
        except _Refused as refused:
            attempt = refused.attempt
        attempt.latency_ms = (time.monotonic() - started) * 1000
        return attempt

    async def _send(self, delivery: ledger.DeliveryRow) -> ledger.Attempt:
        server = self._server()
        username, password = await self._login()
        try:
            message = compose(delivery.payload, message_id=message_id(delivery.id, self.config.mail_from),
                              mail_from=self.config.mail_from, reply_to=self.config.reply_to, now=datetime.now(UTC))
        except (KeyError, TypeError, ValueError) as exc:  # a header with a line break, no recipient...
            return ledger.Attempt("failed", detail=f"the e-mail cannot be composed: {exc!r}")
        key = (server, username, password)
        client: aiosmtplib.SMTP | None = None
        try:
            client, reused = await self._session(key)
            try:
                refused, answer = await client.send_message(message)
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                # a kept session the server closed while it was idle: nothing of this message went
                # (the MAIL command found the connection gone); once more on a new session
                await _quit(client)
                client, _ = await self._session(key, fresh=True)
                refused, answer = await client.send_message(message)
        except aiosmtplib.SMTPException as exc:
            await _quit(client)
            return _outcome(exc)
        except ValueError as exc:  # aiosmtplib refuses an address it cannot send safely, before the envelope
            await _quit(client)
            return ledger.Attempt("failed", detail=f"the e-mail cannot be sent: {exc}")
        except OSError as exc:  # refused connection, unreachable host, failed TLS handshake
            await _quit(client)
            return ledger.Attempt("retry", detail=f"{server.route}: {exc!r}")
        except BaseException:
            await _quit(client)
            raise
        self._keep(key, client)
        # aiosmtplib answers with the text of the DATA reply; it raises on any code but 250
        detail = answer + "".join(f"; refused {address}: {r.code} {r.message}" for address, r in refused.items())
        return ledger.Attempt("delivered", status_code=250, detail=detail)

    async def _session(self, key: tuple[SmtpServer, str | None, str | None], fresh: bool = False
                       ) -> tuple[aiosmtplib.SMTP, bool]:
        """A connected, logged-in session: a kept one (True) unless ``fresh``, or a new one (False)."""
        idle, now = self.idle.get(key, []), time.monotonic()
        while idle and not fresh:
            item = idle.pop()
            if now - item.since < SMTP_IDLE_SECONDS and item.client.is_connected:
                return item.client, True
            await _quit(item.client)
        server, username, password = key
        client = aiosmtplib.SMTP(hostname=server.host, port=server.port, use_tls=server.implicit_tls,
                                 start_tls=None if server.implicit_tls else (True if self.config.smtp_require_tls else None),
                                 username=username, password=password, timeout=self.timeout, tls_context=_tls_context())
        try:
            await client.connect()
        except BaseException:
            await _quit(client)
            raise
        return client, False

    def _keep(self, key: tuple[SmtpServer, str | None, str | None], client: aiosmtplib.SMTP) -> None:
        now = time.monotonic()
        for other, items in list(self.idle.items()):  # sessions of a login since changed, or idle too long
            for item in [i for i in items if now - i.since >= SMTP_IDLE_SECONDS]:
                items.remove(item)
                asyncio.ensure_future(_quit(item.client))
            if not items and other != key:
                del self.idle[other]
        idle = self.idle.setdefault(key, [])
        if len(idle) < self.config.smtp_sessions and client.is_connected:
            idle.append(_Idle(client, time.monotonic()))
        else:
            asyncio.ensure_future(_quit(client))

    def _server(self) -> SmtpServer:
        if not self.config.smtp_url:
            raise _Refused(ledger.Attempt("retry", detail=NO_SERVER))
        try:
            return parse_smtp_url(self.config.smtp_url)
        except ValueError as exc:
            raise _Refused(ledger.Attempt("retry", detail=f"STOREOPS_NOTIFIER__SMTP_URL: {exc}")) from exc

    async def _login(self) -> tuple[str | None, str | None]:
        name = self.config.smtp_credential
        if name is None:
            return None, None
        try:
            async with self.rt.sessions() as session:
                value = await credential_value(session, state_of(self.rt).cipher, name)
        except NotifierError as exc:
            raise _Refused(ledger.Attempt("retry", detail=str(exc))) from exc
        if value is None or ":" not in value:
            why = "is not stored" if value is None else "is not user:password"
            raise _Refused(ledger.Attempt("retry", detail=f"SMTP login: credential {name!r} {why}"))
        username, _, password = value.partition(":")
        return username, password


async def _quit(client: aiosmtplib.SMTP | None) -> None:
    """End a session politely if it still stands, else just drop it."""
    if client is None or not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()


def _tls_context() -> ssl.SSLContext:
    # the system's trust store, which SSL_CERT_FILE / SSL_CERT_DIR extend for a private CA; loading it
    # takes milliseconds, so one context per value of those two
    return _context_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _context_for(_cert_file: str | None, _cert_dir: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


def _outcome(exc: aiosmtplib.SMTPException) -> ledger.Attempt:
    """How an SMTP error ends an attempt.

    Permanent (failed) only where the server refuses this message: a 5xx for every
    recipient, or for its content. A 5xx at greeting, login or MAIL FROM is the
    server's or our configuration's and would refuse every e-mail alike: those
    wait (retry) until it is fixed, as does every 4xx, timeout and lost connection.
    """
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        permanent = bool(codes) and all(code >= 500 for code in codes)
        return ledger.Attempt("failed" if permanent else "retry", status_code=max(codes, default=None), detail=detail)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        permanent = exc.code >= 500 and isinstance(exc, aiosmtplib.SMTPDataError)
        what = "login refused: " if isinstance(exc, aiosmtplib.SMTPAuthenticationError) else ""
        return ledger.Attempt("failed" if permanent else "retry", status_code=exc.code, detail=f"{what}{exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return ledger.Attempt("retry", detail=f"timed out: {exc}")
    return ledger.Attempt("retry", detail=str(exc))


ledger.register("email", EmailSender)
