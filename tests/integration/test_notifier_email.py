"""E-mail: the SMTP sender against a real server (aiosmtpd), templates, digest windows, digests on the real
database, and the ledger carrying an e-mail through an SMTP outage to exactly one delivery."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.exc import ProgrammingError

from services.notifier import ledger, mail
from services.notifier.app import SPEC
from services.notifier.credentials import Cipher
from services.notifier.events import EVENT_TYPES
from services.notifier.ledger import DeliveryRow
from services.notifier.mail import HeldEmailRow
from services.notifier.settings import NotifierConfig, NotifierSettings
from services.notifier.state import NotifierState
from services.notifier.store import put_credential
from storeops.db import make_engine, make_sessionmaker
from storeops.service import Runtime
from tests import smtp
from tests.helpers import eventually
from tests.smtp import SmtpServers, Tls

tls, smtp_servers = smtp.tls, smtp.smtp_servers  # the fixtures of tests/smtp.py

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 3, 9, 15, tzinfo=UTC)
FROM = "storeops <alerts@shop.example>"
MakeRuntime = Callable[..., Runtime[NotifierState]]


def tag() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def database(fresh_database: str) -> str:
    """A database of the test's own with the notifier's migrations applied."""
    SPEC.migrate(fresh_database)
    return fresh_database


@pytest.fixture
async def runtime(database: str, tmp_path: Path) -> AsyncIterator[MakeRuntime]:
    """``runtime(**notifier settings)``: the parts of a notifier's runtime e-mail uses (settings, database, state)."""
    engine = make_engine(database)
    cipher = Cipher(SecretStr(Fernet.generate_key().decode()), tmp_path / "key")

    def make(**config: Any) -> Runtime[NotifierState]:
        settings = NotifierSettings(database_url=database, data_dir=tmp_path,
                                    notifier=NotifierConfig(mail_from=FROM, **config))
        return Runtime("notifier", settings, None, None, None, engine, make_sessionmaker(engine),  # type: ignore[arg-type]
                       _state=NotifierState(cipher=cipher))

    try:
        yield make
    finally:
        await engine.dispose()


def delivery(to: list[str] | None = None, **payload: Any) -> DeliveryRow:
    """A delivery as the ledger hands it over (not stored: the sender reads its id and payload)."""
    fields = {"to": to or ["ana@shop.example"], "subject": "Big order", "text": "ord-1 is 1,500 EUR",
              "html": "<p>ord-1 is <b>1,500 EUR</b></p>", **payload}
    return DeliveryRow(id=uuid.uuid4(), key=f"email:{tag()}", channel="email", route="smtp:test", payload=fields,
                       attempts=0)


async def store_credential(rt: Runtime[NotifierState], name: str, value: str) -> None:
    async with rt.sessions.begin() as session:
        await put_credential(session, name, rt.state.cipher.encrypt(value), "test", NOW)


# --- the sender -------------------------------------------------------------------------------


async def test_a_message_arrives_with_its_headers_and_both_parts(runtime: MakeRuntime, smtp_servers: SmtpServers) -> None:
    server = smtp_servers()
    rt = runtime(smtp_url=server.url, reply_to="ops@shop.example")
    sent = delivery(["ana@shop.example", "ben@shop.example"])
    attempt = await mail.EmailSender(rt).send(sent)
    assert (attempt.outcome, attempt.status_code) == ("delivered", 250), attempt
    assert attempt.latency_ms > 0
    [received] = server.received()
    message = received.message
    assert received.rcpt_tos == ["ana@shop.example", "ben@shop.example"] and not received.tls
    assert (message["From"], message["Reply-To"], message["Subject"]) == (FROM, "ops@shop.example", "Big order")
    assert message["To"] == "ana@shop.example, ben@shop.example"
    assert message["Message-ID"] == f"<{sent.id}@shop.example>"
    assert message["Date"].datetime.tzinfo is not None
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert (text.get_content_type(), text.get_content().strip()) == ("text/plain", "ord-1 is 1,500 EUR")
    assert (html.get_content_type(), html.get_content().strip()) == ("text/html", "<p>ord-1 is <b>1,500 EUR</b></p>")


async def test_a_resend_has_the_same_message_id_and_one_part_is_enough(runtime: MakeRuntime, smtp_servers: SmtpServers) -> None:
    server = smtp_servers()
    sender = mail.EmailSender(runtime(smtp_url=server.url))
    sent = delivery(html=None)
    assert (await sender.send(sent)).outcome == "delivered"
    assert (await sender.send(sent)).outcome == "delivered"
    first, second = server.received()
    assert first.message["Message-ID"] == second.message["Message-ID"] == f"<{sent.id}@shop.example>"
    assert first.message["Reply-To"] is None  # none configured
    assert first.message.get_content_type() == "text/plain"
    assert (await sender.send(delivery(text=None))).outcome == "delivered"
    assert server.received()[2].message.get_content_type() == "text/html"


async def test_starttls_is_used_when_the_server_offers_it(runtime: MakeRuntime, smtp_servers: SmtpServers, tls: Tls,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tls.trust(monkeypatch)
    server = smtp_servers("starttls")
    assert (await mail.EmailSender(runtime(smtp_url=server.url, smtp_require_tls=True)).send(delivery())).outcome == "delivered"
    assert [r.tls for r in server.received()] == [True]


async def test_smtps_speaks_tls_from_the_start(runtime: MakeRuntime, smtp_servers: SmtpServers, tls: Tls,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    tls.trust(monkeypatch)
    server = smtp_servers("smtps")
    assert server.url.startswith("smtps://")
    assert (await mail.EmailSender(runtime(smtp_url=server.url)).send(delivery())).outcome == "delivered"
    assert [r.tls for r in server.received()] == [True]


async def test_an_untrusted_certificate_waits(runtime: MakeRuntime, smtp_servers: SmtpServers) -> None:
    server = smtp_servers("smtps")  # its certificate is not trusted here
    attempt = await mail.EmailSender(runtime(smtp_url=server.url)).send(delivery())
    assert attempt.outcome == "retry" and "CERTIFICATE_VERIFY_FAILED" in attempt.detail, attempt
    assert server.received() == []


async def test_require_tls_refuses_a_server_without_starttls(runtime: MakeRuntime, smtp_servers: SmtpServers) -> None:
    server = smtp_servers("plain")
    attempt = await mail.EmailSender(runtime(smtp_url=server.url, smtp_require_tls=True)).send(delivery())
    assert attempt.outcome == "retry" and "STARTTLS" in attempt.detail, attempt
    assert server.received() == []


async def test_the_login_comes_from_a_named_credential(runtime: MakeRuntime, smtp_servers: SmtpServers, tls: Tls,
                                                       monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    tls.trust(monkeypatch)
    server = smtp_servers("starttls", logins={"mailer": "s3cret:with-colon"})
    rt = runtime(smtp_url=server.url, smtp_credential="smtp-login")
    await store_credential(rt, "smtp-login", "mailer:s3cret:with-colon")  # a password may hold a colon
    caplog.set_level("DEBUG")
    assert (await mail.EmailSender(rt).send(delivery())).outcome == "delivered"
    assert [(r.login, r.tls) for r in server.received()] == [("mailer", True)]
    ours = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records if r.name != "mail.log")  # not the server's
    assert "s3cret" not in ours and "1,500 EUR" not in ours


async def test_a_refused_login_waits(runtime: MakeRuntime, smtp_servers: SmtpServers, tls: Tls,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    tls.trust(monkeypatch)
    server = smtp_servers("starttls", logins={"mailer": "right"})
    rt = runtime(smtp_url=server.url, smtp_credential="smtp-login")
    await store_credential(rt, "smtp-login", "mailer:wrong")
    attempt = await mail.EmailSender(rt).send(delivery())
    assert (attempt.outcome, attempt.status_code) == ("retry", 535), attempt
    assert attempt.detail.startswith("login refused: 535") and "wrong" not in attempt.detail
    assert server.received() == []


@pytest.mark.parametrize(("stored", "why"), [(None, "is not stored"), ("no-colon", "is not user:password")])
async def test_a_credential_that_is_not_a_login_waits(runtime: MakeRuntime, smtp_servers: SmtpServers,
                                                      stored: str | None, why: str) -> None:
    server = smtp_servers()
    rt = runtime(smtp_url=server.url, smtp_credential="smtp-login")
    if stored is not None:
        await store_credential(rt, "smtp-login", stored)
    attempt = await mail.EmailSender(rt).send(delivery())
    assert (attempt.outcome, attempt.detail) == ("retry", f"SMTP login: credential 'smtp-login' {why}")
    assert "no-colon" not in attempt.detail and server.received() == []


async def test_a_credential_under_another_key_waits(runtime: MakeRuntime, smtp_servers: SmtpServers, tmp_path: Path) -> None:
    server = smtp_servers()
    rt = runtime(smtp_url=server.url, smtp_credential="smtp-login")
    other = Cipher(SecretStr(Fernet.generate_key().decode()), tmp_path / "other")
    async with rt.sessions.begin() as session:
        await put_credential(session, "smtp-login", other.encrypt("mailer:pw"), "test", NOW)
    attempt = await mail.EmailSender(rt).send(delivery())
    assert attempt.outcome == "retry" and "cannot be decrypted" in attempt.detail


async def test_a_login_the_server_does_not_offer_waits(runtime: MakeRuntime, smtp_servers: SmtpServers) -> None:
    server = smtp_servers("plain")  # offers no AUTH: aiosmtpd offers it over TLS only
    rt = runtime(smtp_url=server.url, smtp_credential="smtp-login")
    await store_credential(rt, "smtp-login", "mailer:pw")
    attempt = await mail.EmailSender(rt).send(delivery())
    assert attempt.outcome == "retry" and "AUTH" in attempt.detail, attempt


@pytest.mark.parametrize("url", [None, "http://mail.example:25", "smtp://user:pw@mail.example:25", "smtp://mail.example:port"])
async def test_no_usable_server_configured_waits(runtime: MakeRuntime, url: str | None) -> None:
    attempt = await mail.EmailSender(runtime(smtp_url=url)).send(delivery())
    assert attempt.outcome == "retry"
    if url is None:
        assert attempt.detail == mail.NO_SERVER
    else:
        assert attempt.detail.startswith("STOREOPS_NOTIFIER__SMTP_URL: ") and "pw" not in attempt.detail


@pytest.mark.parametrize(("where", "answer", "outcome"), [
    ("rcpt", "451 4.3.0 mailbox busy, try again later", "retry"),
    ("data", "452 4.3.1 insufficient system storage", "retry"),
    ("rcpt", "550 5.1.1 no such user", "failed"),
    ("data", "554 5.7.1 message refused as spam", "failed"),
])
async def test_the_servers_answer_decides_retry_or_failed(runtime: MakeRuntime, smtp_servers: SmtpServers,
                                                          where: str, answer: str, outcome: str) -> None:
    server = smtp_servers()
    setattr(server.keeper, f"refuse_{where}", answer)
    attempt = await mail.EmailSender(runtime(smtp_url=server.url)).send(delivery())
    assert (attempt.outcome, attempt.status_code) == (outcome, int(answer[:3])), attempt
    assert answer[4:] in attempt.detail  # the server's own words
    assert server.received() == []


async def test_a_recipient_refused_among_others_is_said_and_the_rest_delivered(runtime: MakeRuntime,
                                                                               smtp_servers: SmtpServers) -> None:
    server = smtp_servers()
    server.keeper.refuse_for["ben@shop.example"] = "550 5.1.1 no such user"
    attempt = await mail.EmailSender(runtime(smtp_url=server.url)).send(delivery(["ana@shop.example", "ben@shop.example"]))
    assert attempt.outcome == "delivered" and "refused ben@shop.example: 550 5.1.1 no such user" in attempt.detail
    assert [r.rcpt_tos for r in server.received()] == [["ana@shop.example"]]


async def test_a_message_that_cannot_be_composed_fails(runtime: MakeRuntime, smtp_servers: SmtpServers) -> None:
    server = smtp_servers()
    attempt = await mail.EmailSender(runtime(smtp_url=server.url)).send(delivery(subject="Big\r\nBcc: x@evil.example"))
    assert attempt.outcome == "failed" and "cannot be composed" in attempt.detail
    assert server.received() == []


async def test_a_server_that_does_not_answer_times_out_and_waits(runtime: MakeRuntime) -> None:
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never greets
    port = silent.sockets[0].getsockname()[1]
    try:
        attempt = await mail.EmailSender(runtime(smtp_url=f"smtp://127.0.0.1:{port}"), timeout=0.2).send(delivery())
    finally:
        silent.close()
    assert attempt.outcome == "retry" and attempt.detail.startswith("timed out"), attempt


async def test_a_server_down_waits_and_the_message_goes_once_it_is_back(runtime: MakeRuntime,
                                                                        smtp_servers: SmtpServers) -> None:
    server = smtp_servers(start=False)
    sender = mail.EmailSender(runtime(smtp_url=server.url))
    sent = delivery()
    attempt = await sender.send(sent)
    assert attempt.outcome == "retry" and "127.0.0.1" in attempt.detail, attempt
    server.start()
    assert (await sender.send(sent)).outcome == "delivered"
    assert [r.message["Message-ID"] for r in server.received()] == [f"<{sent.id}@shop.example>"]


async def test_e_mails_share_one_kept_session_and_a_session_the_server_closed_is_replaced(
        runtime: MakeRuntime, smtp_servers: SmtpServers) -> None:
    server = smtp_servers()
    sender = mail.EmailSender(runtime(smtp_url=server.url))
    sent = [delivery() for _ in range(4)]
    for d in sent[:3]:
        assert (await sender.send(d)).outcome == "delivered"
    assert len({r.peer for r in server.received()}) == 1  # one connection, TLS and login for all three
    server.stop()  # the server goes away; the kept session with it
    server.start()
    attempt = await sender.send(sent[3])
    assert attempt.outcome == "delivered", attempt
    received = server.received()
    assert [r.message["Message-ID"] for r in received] == [f"<{d.id}@shop.example>" for d in sent]  # each once
    assert received[3].peer != received[0].peer
    await sender.close()
    assert sender.idle == {}


async def test_a_session_that_failed_is_not_kept(runtime: MakeRuntime, smtp_servers: SmtpServers) -> None:
    server = smtp_servers()
    sender = mail.EmailSender(runtime(smtp_url=server.url))
    server.keeper.refuse_data = "451 4.3.0 try again later"
    assert (await sender.send(delivery())).outcome == "retry"
    assert all(not idle for idle in sender.idle.values())
    server.keeper.refuse_data = None
    assert (await sender.send(delivery())).outcome == "delivered"
    assert sum(len(idle) for idle in sender.idle.values()) == 1
    await sender.close()


# --- through the ledger ---------------------------------------------------------------------------


async def run_once(loop: ledger.Loop) -> int:
    """One pass of the delivery loop: claim what is due and wait for its sends to be recorded."""
    claimed = await loop.claim_some()
    await asyncio.gather(*loop.inflight)
    return claimed


async def test_smtp_down_queued_then_delivered_once_when_back(runtime: MakeRuntime, smtp_servers: SmtpServers) -> None:
    server = smtp_servers(start=False)
    rt = runtime(smtp_url=server.url, retry_schedule_seconds=[0, 0, 0, 0])
    notification = uuid.uuid4()
    async with rt.sessions.begin() as session:
        for _ in range(2):  # a redelivered notification enqueues nothing twice
            await mail.enqueue_now(session, address="ana@shop.example", recipient="ana", kind="stock.low",
                                   notification_id=notification, context={"title": "sku-1 at 2"}, now=NOW,
                                   route=ledger.smtp_route(server.url))
    assert ledger.smtp_route(server.url) == f"smtp:127.0.0.1:{server.port}"
    loop = ledger.Loop(rt)  # the senders registered at import: mail.EmailSender for "email"
    assert isinstance(loop.senders["email"], mail.EmailSender)
    assert await run_once(loop) == 1
    key = f"email:{notification}:ana@shop.example"
    async with rt.sessions() as session:
        row = await session.scalar(select(DeliveryRow).where(DeliveryRow.key == key))
    assert row is not None and (row.state, row.attempts) == ("pending", 1)
    server.start()
    assert await run_once(loop) == 1
    assert await run_once(ledger.Loop(rt)) == 0  # a restarted notifier finds nothing left to send
    [received] = server.received()
    assert received.message["Message-ID"] == f"<{row.id}@shop.example>"
    assert received.message["Subject"] == "Low stock: sku-1 at 2"
    async with rt.sessions() as session:
        row = await session.scalar(select(DeliveryRow).where(DeliveryRow.key == key))
    assert row is not None and (row.state, row.attempts) == ("delivered", 2)


# --- templates ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*EVENT_TYPES, "something.new"])
def test_every_kind_renders_its_title_in_subject_text_and_html(kind: str) -> None:
    subject, text, html = mail.render(kind, {"title": "sku-1 at 2", "body": "reorder at 5", "severity": "High",
                                             "link": "https://ops.shop.example/n/1", "recipient": "ana"})
    assert "sku-1 at 2" in subject and "\n" not in subject
    for part in (text, html):
        assert "sku-1 at 2" in part and "reorder at 5" in part and "https://ops.shop.example/n/1" in part
    assert html.lstrip().startswith("<!DOCTYPE html>")


def test_each_kind_has_its_own_template_and_an_unknown_one_the_generic() -> None:
    assert all((mail.TEMPLATES / f"{kind}.{ext}").exists() for kind in EVENT_TYPES for ext in ("txt", "html"))
    assert mail.render("stock.low", {"title": "t"})[0] == "Low stock: t"
    assert mail.render("exception.assigned", {"title": "t", "assignee": "ben"})[0] == "Assigned to ben: t"
    assert mail.render("something.new", {"title": "t"})[0] == "t"


def test_html_is_escaped_and_text_is_not() -> None:
    subject, text, html = mail.render("exception.created", {"title": "<script>x</script> & co", "body": "a < b"})
    assert "<script>" not in html and "&lt;script&gt;" in html and "a &lt; b" in html
    assert "<script>x</script> & co" in text and "a < b" in text


# --- digest windows (pure) ------------------------------------------------------------------------

BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("now", "end"), [
    (utc(2026, 12, 3, 9, 15), utc(2026, 12, 3, 10, 0)),
    (utc(2026, 12, 3, 9, 0), utc(2026, 12, 3, 10, 0)),       # at an end: the next one
    (utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 0)),       # 01:30 CET → 03:00 CEST (02:00 does not exist)
    (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 0)),     # 02:30 CEST → 02:00 CET, the repeated hour
    (utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 2, 0)),     # 02:30 CET → 03:00 CET
])
def test_an_hourly_window_ends_at_each_full_hour_in_the_zone(now: datetime, end: datetime) -> None:
    assert mail.parse_window("hourly", BERLIN).end_after(now) == end


def test_an_hourly_window_follows_a_zone_off_the_full_utc_hour() -> None:
    assert mail.parse_window("hourly", "Asia/Kolkata").end_after(utc(2026, 12, 3, 9, 15)) == utc(2026, 12, 3, 9, 30)
    # Lord Howe moves its clocks by 30 minutes: at 02:00 LHST (15:30 UTC) they show 02:30; the hour 01:00
    # ends there, and the next one at 03:00 LHDT
    lord_howe = mail.parse_window("hourly", "Australia/Lord_Howe")
    assert lord_howe.end_after(utc(2026, 10, 3, 15, 15)) == utc(2026, 10, 3, 15, 30)
    assert lord_howe.end_after(utc(2026, 10, 3, 15, 30)) == utc(2026, 10, 3, 16, 0)


@pytest.mark.parametrize(("now", "end"), [
    (utc(2026, 12, 3, 6, 0), utc(2026, 12, 3, 7, 0)),        # 08:00 CET is 07:00 UTC in winter
    (utc(2026, 12, 3, 7, 0), utc(2026, 12, 4, 7, 0)),        # at the end: tomorrow's
    (utc(2026, 3, 28, 8, 0), utc(2026, 3, 29, 6, 0)),        # across spring forward: 08:00 CEST is 06:00 UTC
    (utc(2026, 10, 24, 7, 0), utc(2026, 10, 25, 7, 0)),      # across fall back: 25 hours later
])
def test_a_daily_window_ends_at_its_local_time_across_dst(now: datetime, end: datetime) -> None:
    assert mail.parse_window("daily@08:00", BERLIN).end_after(now) == end


def test_a_daily_time_in_a_gap_comes_later_and_a_repeated_one_first() -> None:
    gap = mail.parse_window("daily@02:30", BERLIN).end_after(utc(2026, 3, 28, 12, 0))
    assert gap == utc(2026, 3, 29, 1, 30) and gap.astimezone(ZoneInfo(BERLIN)).strftime("%H:%M") == "03:30"
    assert mail.parse_window("daily@02:30", BERLIN).end_after(utc(2026, 10, 24, 12, 0)) == utc(2026, 10, 25, 0, 30)
    assert mail.parse_window("daily@00:00", "UTC").end_after(utc(2026, 12, 31, 23, 59)) == utc(2027, 1, 1)


@pytest.mark.parametrize(("window", "tz", "error"), [
    ("weekly", BERLIN, "unknown digest window 'weekly': expected 'hourly' or 'daily@HH:MM'"),
    ("daily@24:00", BERLIN, "unknown digest window 'daily@24:00'"),
    ("daily@8:00", BERLIN, "unknown digest window 'daily@8:00'"),
    ("daily", BERLIN, "unknown digest window 'daily'"),
    ("hourly", "Mars/Olympus", "unknown time zone 'Mars/Olympus': an IANA name is expected"),
    ("hourly", "../etc/passwd", "unknown time zone '../etc/passwd'"),
    ("hourly", "", "unknown time zone ''"),
])
def test_a_bad_window_or_zone_is_refused_with_what_is_accepted(window: str, tz: str, error: str) -> None:
    with pytest.raises(ValueError, match="^" + error.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        mail.parse_window(window, tz)


# --- digests --------------------------------------------------------------------------------------


async def hold(rt: Runtime[NotifierState], recipient: str, severity: str | None, at: datetime, window: str = "hourly",
               title: str | None = None) -> uuid.UUID:
    notification = uuid.uuid4()
    async with rt.sessions.begin() as session:
        await mail.hold(session, recipient=recipient, address=f"{recipient}@shop.example", window=window, tz=BERLIN,
                        notification_id=notification, kind="exception.created", title=title or f"{severity} at {at:%H:%M}",
                        body="look", severity=severity, now=at)
    return notification


async def digests_of(rt: Runtime[NotifierState], recipient: str) -> list[DeliveryRow]:
    async with rt.sessions() as session:
        query = select(DeliveryRow).where(DeliveryRow.recipient == recipient).order_by(DeliveryRow.created_at)
        return list((await session.scalars(query)).all())


async def states(rt: Runtime[NotifierState], recipient: str) -> list[str]:
    async with rt.sessions() as session:
        query = select(HeldEmailRow.state).where(HeldEmailRow.recipient == recipient).order_by(HeldEmailRow.seq)
        return list((await session.scalars(query)).all())


async def test_a_digest_counts_shows_the_top_items_and_links_the_rest(runtime: MakeRuntime) -> None:
    rt = runtime(public_url="https://ops.shop.example/")
    ana = f"ana-{tag()}"
    severities = ["Low"] * 5 + ["High"] * 3 + ["Critical"] * 2 + [None, "Medium"]
    for minute, severity in enumerate(severities):
        await hold(rt, ana, severity, NOW + timedelta(minutes=minute))
    end = utc(2026, 12, 3, 10, 0)
    assert await mail.send_due_digests(rt, end - timedelta(seconds=1)) == 0  # the window is still open
    due = rt.state.deliveries_due
    due.clear()
    assert await mail.send_due_digests(rt, end) == 1 and due.is_set()
    [digest] = await digests_of(rt, ana)
    assert digest.key == f"digest:{ana}:{ana}@shop.example:{end.isoformat()}"
    assert (digest.channel, digest.route, digest.payload["to"]) == ("email", "smtp:unset", [f"{ana}@shop.example"])
    payload = digest.payload
    assert payload["subject"] == "storeops digest: 12 notifications (2 Critical, 3 High)"
    text, html = payload["text"], payload["html"]
    counts = [line.strip() for line in text.split("\n\n")[0].splitlines()[1:]]
    assert counts == ["2 Critical", "3 High", "1 Medium", "5 Low", "1 no severity"]
    items = [line for line in text.splitlines() if line.startswith("- ")]
    # most severe first, newest first within a severity; ten shown
    assert items[:3] == ["- [Critical] Critical at 09:24", "- [Critical] Critical at 09:23", "- [High] High at 09:22"]
    assert len(items) == 10 and "Low at 09:16" in text and "Low at 09:15" not in text and "None at" not in text
    feed = f"https://ops.shop.example/v1/notifications?recipient={ana}"
    assert f"... and 2 more: {feed}" in text
    assert f'<a href="{feed}">and 2 more</a>' in html and "Critical at 09:24" in html
    assert await states(rt, ana) == ["sent"] * 12


async def test_a_window_with_nothing_left_sends_nothing_and_read_items_are_dropped(runtime: MakeRuntime) -> None:
    rt = runtime()
    ana, ben = f"ana-{tag()}", f"ben-{tag()}"
    read, unread = await hold(rt, ana, "High", NOW), await hold(rt, ana, "Low", NOW)
    only = await hold(rt, ben, "Critical", NOW)
    async with rt.sessions.begin() as session:
        assert await mail.forget(session, [read, only, uuid.uuid4()]) == 2
        assert await mail.forget(session, [read]) == 0  # dropped already
        assert await mail.forget(session, []) == 0
    assert await mail.send_due_digests(rt, utc(2026, 12, 3, 10, 0)) == 1
    [digest] = await digests_of(rt, ana)
    assert "Low at 09:15" in digest.payload["text"] and "High at 09:15" not in digest.payload["text"]
    assert await digests_of(rt, ben) == []
    assert (await states(rt, ana), await states(rt, ben)) == (["dropped", "sent"], ["dropped"])
    async with rt.sessions.begin() as session:
        assert await mail.forget(session, [unread]) == 0  # sent already: too late to drop


async def test_read_items_stay_when_digests_keep_them(runtime: MakeRuntime) -> None:
    rt = runtime(digest_drops_read=False)
    ana = f"ana-{tag()}"
    read = await hold(rt, ana, "High", NOW)
    async with rt.sessions.begin() as session:
        assert await mail.forget(session, [read], enabled=rt.settings.notifier.digest_drops_read) == 0  # type: ignore[attr-defined]
    assert await mail.send_due_digests(rt, utc(2026, 12, 3, 10, 0)) == 1
    assert await states(rt, ana) == ["sent"]


async def test_holding_again_is_harmless_and_a_bad_window_holds_nothing(runtime: MakeRuntime) -> None:
    rt = runtime()
    ana = f"ana-{tag()}"
    notification = uuid.uuid4()
    async with rt.sessions.begin() as session:
        for _ in range(2):
            await mail.hold(session, recipient=ana, address="a@shop.example", window="daily@08:00", tz=BERLIN,
                            notification_id=notification, kind="stock.low", title="t", body="b", severity=None, now=NOW)
        with pytest.raises(ValueError, match="unknown digest window 'daily@8'"):
            await mail.hold(session, recipient=ana, address="a@shop.example", window="daily@8", tz=BERLIN,
                            notification_id=uuid.uuid4(), kind="stock.low", title="t", body="b", severity=None, now=NOW)
    async with rt.sessions() as session:
        [row] = (await session.scalars(select(HeldEmailRow).where(HeldEmailRow.recipient == ana))).all()
    assert row.window_end == utc(2026, 12, 4, 7, 0)  # tomorrow 08:00 in Berlin


async def test_a_restarted_digest_loop_sends_no_digest_twice(runtime: MakeRuntime) -> None:
    rt = runtime()
    ana = f"ana-{tag()}"
    await hold(rt, ana, "High", NOW)
    end = utc(2026, 12, 3, 10, 0)
    assert await mail.send_due_digests(rt, end) == 1
    assert await mail.send_due_digests(runtime(), end + timedelta(minutes=1)) == 0  # a new process, same database
    assert len(await digests_of(rt, ana)) == 1


async def test_an_item_held_while_its_window_was_sent_goes_in_the_next(runtime: MakeRuntime) -> None:
    rt = runtime()
    ana = f"ana-{tag()}"
    await hold(rt, ana, "High", NOW, title="first")
    end = utc(2026, 12, 3, 10, 0)
    assert await mail.send_due_digests(rt, end) == 1
    # a hold that began before the end and committed after the digest went: same window end, still held
    await hold(rt, ana, "Low", end - timedelta(seconds=1), title="late")
    assert await mail.send_due_digests(rt, end + timedelta(seconds=5)) == 0
    assert await states(rt, ana) == ["sent", "held"]
    assert await mail.send_due_digests(rt, end + timedelta(hours=1)) == 1
    first, second = await digests_of(rt, ana)
    assert "first" in first.payload["text"] and "late" not in first.payload["text"]
    assert "late" in second.payload["text"] and second.key.endswith(utc(2026, 12, 3, 11, 0).isoformat())
    assert await states(rt, ana) == ["sent", "sent"]


async def test_the_digest_loop_sends_what_is_due_and_waits_out_a_database_away(
        runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    monkeypatch.setattr(mail, "DIGEST_POLL_SECONDS", 0.01)
    rt = runtime()
    ana = f"ana-{tag()}"
    await hold(rt, ana, "High", datetime.now(UTC) - timedelta(hours=2))  # its window has ended
    loop = asyncio.create_task(mail.digests(rt))
    try:
        await eventually(lambda: digests_of(rt, ana))
    finally:
        loop.cancel()
    # a database that does not answer: said once, and the loop goes on polling
    away = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'db.sqlite'}")
    broken = replace(rt, engine=away, sessionmaker=make_sessionmaker(away))
    polls = 0
    send_due = mail.send_due_digests

    async def counted(rt: Runtime[Any], now: datetime) -> int:
        nonlocal polls
        polls += 1
        return await send_due(rt, now)

    monkeypatch.setattr(mail, "send_due_digests", counted)
    loop = asyncio.create_task(mail.digests(broken))
    try:
        await eventually(lambda: asyncio.sleep(0, polls >= 3))
        assert not loop.done()  # it went on after the failures
    finally:
        loop.cancel()
        await away.dispose()
    warnings = [r for r in caplog.records if r.name == mail.log.name]
    assert [r.getMessage() for r in warnings] == ["digests: the database does not answer; trying again"]


async def test_a_bug_in_a_digest_pass_ends_the_loop(runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    async def buggy(rt: Runtime[Any], now: datetime) -> int:
        raise ProgrammingError("SELECT nonsense", {}, Exception("syntax error"))

    monkeypatch.setattr(mail, "send_due_digests", buggy)
    with pytest.raises(ProgrammingError):  # not waited out: the process ends and is restarted
        await mail.digests(runtime())


async def test_the_digest_goes_out_through_the_ledger(runtime: MakeRuntime, smtp_servers: SmtpServers) -> None:
    server = smtp_servers()
    rt = runtime(smtp_url=server.url, retry_schedule_seconds=[0])
    ana = f"ana-{tag()}"
    await hold(rt, ana, "Critical", NOW)
    assert await mail.send_due_digests(rt, utc(2026, 12, 3, 10, 0)) == 1
    [digest] = await digests_of(rt, ana)
    assert digest.route == f"smtp:127.0.0.1:{server.port}"
    assert await run_once(ledger.Loop(rt)) >= 1
    [received] = [r for r in server.received() if r.rcpt_tos == [f"{ana}@shop.example"]]
    assert received.message["Subject"] == "storeops digest: 1 notification (1 Critical)"
    assert received.message.get_content_type() == "multipart/alternative"
