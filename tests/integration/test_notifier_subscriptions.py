"""Subscriptions and teams: the API (who may manage whose, each refusal naming its field), the
matching (``route``, pure: defaults, filters, critical that cannot be muted, quiet hours), and the
handler sending what they ask for, on the real database and the suite's broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from schemas.common import Severity
from services.notifier import ledger, mail
from services.notifier.app import SPEC
from services.notifier.credentials import CREDENTIALS_KEY_ENV
from services.notifier.events import Occurrence
from services.notifier.store import NotificationRow
from services.notifier.subscriptions import QuietHours, Subscription, route
from storeops.auth import Role
from storeops.service import Runtime, build_app
from storeops_cli.broker import RunningBroker
from tests.helpers import assert_forbidden, bearer
from tests.integration.test_notifier_inbox import OPERATOR, assigned, feed_changes, settings_for, tag

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
CRITICAL = ("Critical",)


@pytest.fixture
def database(fresh_database: str) -> str:
    SPEC.migrate(fresh_database)
    return fresh_database


@pytest.fixture
def notifier_app(database: str, broker: RunningBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", CREDENTIALS_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    return build_app(replace(SPEC, consumes=()), settings_for(database, broker, tmp_path))


@pytest.fixture
async def rt(notifier_app: FastAPI) -> AsyncIterator[Runtime[Any]]:
    async with notifier_app.router.lifespan_context(notifier_app):
        yield notifier_app.state.runtime


@pytest.fixture
async def api(rt: Runtime[Any], notifier_app: FastAPI, tokens: dict[Role, str]) -> AsyncIterator[dict[Role, httpx.AsyncClient]]:
    transport = httpx.ASGITransport(app=notifier_app)
    clients = {role: httpx.AsyncClient(transport=transport, base_url="http://notifier", headers=bearer(token))
               for role, token in tokens.items()}
    yield clients
    for c in clients.values():
        await c.aclose()


def field_of(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    return response.json()["errors"][0]["field"]


# --- the API ------------------------------------------------------------------------------------


async def test_an_operator_manages_their_own_subscriptions(api: dict[Role, httpx.AsyncClient]) -> None:
    me = api[Role.operator]
    created = await me.post("/v1/subscriptions", json={"event_types": ["stock.low"], "filters": {"entity": "sku:A-1"}})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["owner"], body["channel"], body["version"], body["updated_by"]) == (OPERATOR, "in_app", 1, OPERATOR)
    sub = f"/v1/subscriptions/{body['id']}"
    replaced = await me.put(sub, json={"event_types": ["price.changed"], "enabled": False})
    assert replaced.status_code == 200 and replaced.json()["version"] == 2 and replaced.json()["enabled"] is False
    assert (await api[Role.viewer].get(sub)).json()["event_types"] == ["price.changed"]
    listed = (await api[Role.viewer].get("/v1/subscriptions", params={"owner": OPERATOR})).json()
    assert [s["id"] for s in listed["items"]] == [body["id"]] and listed["next_cursor"] is None
    assert (await me.delete(sub)).status_code == 204
    assert (await me.get(sub)).status_code == 404
    assert (await me.delete(sub)).status_code == 404


async def test_only_an_admin_manages_someone_else_s_or_a_team_s(api: dict[Role, httpx.AsyncClient]) -> None:
    for owner in ("someone-else", "team:ops-team"):
        refused = await api[Role.operator].post("/v1/subscriptions", json={"owner": owner, "event_types": ["stock.low"]})
        assert refused.status_code == 403 and refused.json()["errors"][0]["field"] == "owner"
    theirs = await api[Role.admin].post("/v1/subscriptions", json={"owner": "team:ops-team", "event_types": ["stock.low"]})
    assert theirs.status_code == 201
    path = f"/v1/subscriptions/{theirs.json()['id']}"
    assert (await api[Role.operator].put(path, json={"event_types": ["stock.low"]})).status_code == 403
    assert (await api[Role.operator].delete(path)).status_code == 403
    assert_forbidden(await api[Role.viewer].post("/v1/subscriptions", json={"event_types": ["stock.low"]}),
                     Role.operator, Role.viewer)
    moved = await api[Role.admin].put(path, json={"owner": "team:other", "event_types": ["stock.low"]})
    assert field_of(moved) == "owner"


@pytest.mark.parametrize(("body", "field"), [
    ({"event_types": []}, "event_types"),
    ({"event_types": ["exception.exploded"]}, "event_types[0]"),
    ({"event_types": ["stock.low"], "channel": "email"}, "address"),
    ({"event_types": ["stock.low"], "channel": "email", "address": "not-an-address"}, "address"),
    ({"event_types": ["stock.low"], "channel": "email_digest", "address": "a@shop.example"}, "window"),
    ({"event_types": ["stock.low"], "channel": "email_digest", "address": "a@shop.example", "window": "weekly"}, "window"),
    ({"event_types": ["stock.low"], "channel": "email_digest", "address": "a@shop.example", "window": "hourly",
      "tz": "Mars/Olympus"}, "tz"),
    ({"event_types": ["stock.low"], "channel": "webhook"}, "endpoint_id"),
    ({"event_types": ["stock.low"], "channel": "pigeon"}, "channel"),
    ({"event_types": ["stock.low"], "filters": {"severities": ["Urgent"]}}, "filters.severities[0]"),
    ({"event_types": ["stock.low"], "quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
    ({"event_types": ["stock.low"], "quiet_hours": {"start": "22:00", "end": "22:00"}}, "quiet_hours.end"),
    ({"event_types": ["stock.low"], "quiet_hours": {"start": "22:00", "end": "07:00", "tz": "Nowhere"}}, "quiet_hours.tz"),
    ({"event_types": ["stock.low"], "colour": "red"}, "colour"),
])
async def test_a_subscription_that_is_not_valid_gets_422_naming_the_field(
        api: dict[Role, httpx.AsyncClient], body: dict[str, Any], field: str) -> None:
    assert field_of(await api[Role.operator].post("/v1/subscriptions", json=body)) == field


async def test_a_team_quiet_hours_and_a_bad_cursor_are_refused(api: dict[Role, httpx.AsyncClient]) -> None:
    body = {"owner": "team:night", "event_types": ["stock.low"], "quiet_hours": {"start": "22:00", "end": "07:00"}}
    assert field_of(await api[Role.admin].post("/v1/subscriptions", json=body)) == "quiet_hours"
    assert field_of(await api[Role.viewer].get("/v1/subscriptions", params={"cursor": "eyJ4IjoxfQ"})) == "cursor"
    assert (await api[Role.viewer].get(f"/v1/subscriptions/{uuid.uuid4()}")).status_code == 404


async def test_admins_manage_team_members_and_members_read_the_team_feed(
        api: dict[Role, httpx.AsyncClient], rt: Runtime[Any]) -> None:
    team = f"night-{tag()}"
    members = f"/v1/subscriptions/teams/{team}/members"
    assert (await api[Role.viewer].get(members)).status_code == 404
    assert_forbidden(await api[Role.operator].put(f"{members}/{OPERATOR}"), Role.admin, Role.operator)
    assert (await api[Role.admin].put(f"{members}/{OPERATOR}")).status_code == 201
    assert (await api[Role.admin].put(f"{members}/{OPERATOR}")).status_code == 200
    assert (await api[Role.viewer].get(members)).json() == {"team": team, "members": [OPERATOR]}
    created = await api[Role.admin].post("/v1/subscriptions", json={
        "owner": f"team:{team}", "event_types": ["exception.created"], "filters": {"severities": ["Low"]}})
    assert created.status_code == 201
    await feed_changes(rt, assigned("nobody", Severity.LOW, "created"))
    items = (await api[Role.operator].get("/v1/notifications")).json()["items"]
    assert [i["recipient"] for i in items] == [team]  # the team's; the default team's Low one is not in the inbox
    assert (await api[Role.admin].delete(f"{members}/{OPERATOR}")).status_code == 204
    assert (await api[Role.admin].delete(f"{members}/{OPERATOR}")).status_code == 404
    assert (await api[Role.viewer].get(members)).status_code == 404  # no members left: no team
    assert (await api[Role.operator].get("/v1/notifications")).json()["items"] == []


async def test_the_handler_sends_e_mail_now_and_holds_it_for_a_digest(api: dict[Role, httpx.AsyncClient],
                                                                       rt: Runtime[Any]) -> None:
    for body in ({"channel": "email", "address": "now@shop.example"},
                 {"channel": "email_digest", "address": "later@shop.example", "window": "daily@08:00",
                  "tz": "Europe/Berlin"}):
        created = await api[Role.operator].post("/v1/subscriptions", json={"event_types": ["exception.assigned"], **body})
        assert created.status_code == 201, created.text
    await feed_changes(rt, assigned(OPERATOR))
    async with rt.sessions() as session:
        held = (await session.scalars(select(mail.HeldEmailRow))).all()
        stored = (await session.scalars(select(NotificationRow))).all()
        sent = (await session.scalars(select(ledger.DeliveryRow))).all()
    assert [(h.address, h.window, h.kind) for h in held] == [("later@shop.example", "daily@08:00", "exception.assigned")]
    # the owner's subscriptions replace their default: no in-app copy; none asked for
    assert [r.recipient for r in stored] == []
    assert [(d.channel, d.key.endswith(":now@shop.example")) for d in sent] == [("email", True)]


# --- route(): pure ------------------------------------------------------------------------------


def occ(type_: str = "exception.created", severity: str | None = "Medium", assignee: str | None = None,
        entity: str | None = "sku:A-1", exception_type: str | None = "inventory", id_: uuid.UUID | None = None) -> Occurrence:
    return Occurrence(type_, id_ or uuid.uuid4(), {}, severity, exception_type, entity, assignee)


def sub(owner: str, *types: str, **fields: Any) -> Subscription:
    return Subscription(id=uuid.uuid4(), owner=owner, event_types=frozenset(types), **fields)


def routed(occurrences: list[Occurrence], subscriptions: list[Subscription], teams: dict[str, set[str]] | None = None,
           now: datetime = NOW) -> Any:
    return route(occurrences, subscriptions, teams or {}, now, default_recipient="ops-team", critical=CRITICAL)


def test_with_nothing_configured_the_default_team_and_the_assignee_hear_it() -> None:
    created, handed = occ(assignee="ana"), occ("exception.assigned", assignee="ana")
    r = routed([created, handed, occ("exception.resolved"), occ("stock.low", None)], [])
    assert [(i.occurrence, i.recipient) for i in r.in_app] == [(created, "ops-team"), (created, "ana"), (handed, "ana")]
    assert r.email_now == r.held == r.webhooks == []


def test_filters_narrow_by_severity_exception_type_and_entity() -> None:
    wanted = sub("ana", "exception.created", severities=frozenset({"High"}), exception_types=frozenset({"pricing"}),
                 entity="sku:B-2")
    hit = occ(severity="High", exception_type="pricing", entity="sku:B-2")
    misses = [occ(severity="Low", exception_type="pricing", entity="sku:B-2"), occ(severity="High", entity="sku:B-2"),
              occ(severity="High", exception_type="pricing", entity="sku:C-3")]
    r = routed([hit, *misses], [wanted])
    assert [i.occurrence for i in r.in_app if i.recipient == "ana"] == [hit]


def test_assigned_to_me_is_the_owner_s_or_a_team_member_s() -> None:
    mine, team = sub("ana", "exception.assigned"), sub("team:night", "exception.assigned")
    to_ana, to_ben, to_cy = (occ("exception.assigned", assignee=a) for a in ("ana", "ben", "cy"))
    r = routed([to_ana, to_ben, to_cy], [mine, team], {"night": {"ben"}})
    assert {(i.occurrence.assignee, i.recipient) for i in r.in_app} == {("ana", "ana"), ("ben", "night"), ("ben", "ben"),
                                                                        ("cy", "cy")}


def test_a_team_with_subscriptions_of_its_own_replaces_its_default_but_critical_cannot_be_muted() -> None:
    only_stock = sub("team:ops-team", "stock.low")
    disabled = sub("ana", "exception.created", enabled=False)
    medium, critical = occ(assignee="ana"), occ(severity="Critical", assignee="ana")
    r = routed([medium, critical], [only_stock, disabled])
    assert [(i.occurrence, i.recipient) for i in r.in_app] == [(critical, "ops-team"), (critical, "ana")]


def test_quiet_hours_hold_e_mail_back_until_they_end_except_critical() -> None:
    night = QuietHours(time(22, 0), time(7, 0), "Europe/Berlin")
    by_mail = sub("ana", "exception.created", channel="email", address="ana@shop.example", quiet_hours=night)
    medium, critical = occ(), occ(severity="Critical")
    at_night = datetime(2026, 12, 3, 23, 30, tzinfo=UTC)  # 00:30 in Berlin
    r = routed([medium, critical], [by_mail], now=at_night)
    assert [m.occurrence for m in r.email_now] == [critical]
    assert [(h.occurrence, h.window, h.tz) for h in r.held] == [(medium, "daily@07:00", "Europe/Berlin")]
    assert r.delayed == r.held
    by_day = routed([medium], [by_mail], now=NOW)  # 13:00 in Berlin
    assert [m.occurrence for m in by_day.email_now] == [medium] and by_day.held == []


def test_quiet_hours_within_one_day_and_spanning_midnight() -> None:
    lunch = QuietHours(time(12, 0), time(13, 0), "UTC")
    assert lunch.holds(NOW) and not lunch.holds(NOW.replace(hour=13))
    night = QuietHours(time(22, 0), time(7, 0), "UTC")
    assert night.holds(NOW.replace(hour=23)) and night.holds(NOW.replace(hour=3)) and not night.holds(NOW)


def test_one_in_app_notification_and_one_e_mail_per_record_and_destination() -> None:
    run = uuid.uuid4()
    matched, failed = occ("violation.detected", None, id_=run), occ("rule_run.failed", None, id_=run)
    subs = [sub("ana", "violation.detected", "rule_run.failed"),
            sub("ana", "rule_run.failed", channel="email", address="a@shop.example"),
            sub("ana", "violation.detected", channel="email_digest", address="a@shop.example", window="hourly"),
            sub("ana", "rule_run.failed", channel="webhook", endpoint_id=uuid.uuid4())]
    r = routed([matched, failed], subs)
    assert [(i.occurrence.type, i.recipient) for i in r.in_app] == [("rule_run.failed", "ana")]
    assert [m.occurrence.type for m in r.email_now] == ["rule_run.failed"] and r.held == []  # now beats the digest
    assert [(h.occurrence.type, h.owner) for h in r.webhooks] == [("rule_run.failed", "ana")]


# --- webhook subscriptions and delivery trouble ---------------------------------------------------


async def test_a_webhook_subscription_enqueues_a_signed_delivery_to_its_endpoint(api: dict[Role, httpx.AsyncClient],
                                                                                 rt: Runtime[Any]) -> None:
    unknown = await api[Role.operator].post("/v1/subscriptions", json={
        "event_types": ["exception.assigned"], "channel": "webhook", "endpoint_id": str(uuid.uuid4())})
    assert field_of(unknown) == "endpoint_id" and "POST /v1/webhook-endpoints" in unknown.json()["errors"][0]["error"]
    endpoint = await api[Role.admin].post("/v1/webhook-endpoints", json={"url": "https://hooks.example/ops",
                                                                         "event_types": ["order.received"]})
    assert endpoint.status_code == 201, endpoint.text
    endpoint_id = endpoint.json()["id"]
    created = await api[Role.operator].post("/v1/subscriptions", json={
        "event_types": ["exception.assigned"], "channel": "webhook", "endpoint_id": endpoint_id})
    assert created.status_code == 201, created.text
    change = assigned(OPERATOR)
    await feed_changes(rt, change)
    await feed_changes(rt, change)  # redelivered: nothing twice
    async with rt.sessions() as session:
        sent = (await session.scalars(select(ledger.DeliveryRow))).all()
    # the endpoint itself takes order.received only: the subscription alone sends it, to that endpoint
    assert [(d.channel, str(d.endpoint_id), d.recipient, d.payload["type"]) for d in sent] == [
        ("webhook", endpoint_id, OPERATOR, "exception.assigned")]
    assert d_data(sent[0])["exception_id"] == str(change.data.exception_id)


def d_data(delivery: ledger.DeliveryRow) -> dict[str, Any]:
    data: dict[str, Any] = delivery.payload["data"]
    return data


async def test_delivery_trouble_reaches_the_endpoint_s_owner_and_every_admin(api: dict[Role, httpx.AsyncClient],
                                                                            rt: Runtime[Any]) -> None:
    from services.notifier import trouble

    endpoint = await api[Role.admin].post("/v1/webhook-endpoints", json={"url": "https://hooks.example/gone"})
    assert endpoint.status_code == 201, endpoint.text
    endpoint_id = uuid.UUID(endpoint.json()["id"])
    at = datetime.now(UTC)
    async with rt.sessions.begin() as session:
        await trouble.tell_people(session, ledger.Trouble("delivery_dead", f"endpoint:{endpoint_id}", "answered 500",
                                                          at, uuid.uuid4(), endpoint_id))
    admin = (await api[Role.admin].get("/v1/notifications")).json()["items"]
    told = [i for i in admin if i["kind"] == "delivery.failed"]
    # the owner (test-admin made the endpoint) and the admins' feed, which every admin reads
    assert sorted(i["recipient"] for i in told) == ["role:admin", "test-admin"]
    assert all(i["severity"] == "High" and "answered 500" in i["body"] for i in told)
    # an operator is not told of the store's integrations, and a viewer neither
    for role in (Role.operator, Role.viewer):
        assert [i for i in (await api[role].get("/v1/notifications")).json()["items"] if i["kind"] == "delivery.failed"] == []
    stored = (await api[Role.viewer].get("/v1/notifications", params={"recipient": "role:admin"})).json()["items"]
    assert [i["kind"] for i in stored] == ["delivery.failed"]
