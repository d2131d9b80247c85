"""``storeops token`` over the real command and real processes.

The stack runs with a signing key and a token list of its own (so its list holds only
what this module made) and re-reads the list every ``REFRESH`` seconds
(``STOREOPS_AUTH__REFRESH_SECONDS``). The command runs with exactly the services'
environment, as an operator on the same machine would. Checked: ``token create``
prints the token alone on stdout's last line (``TOKEN=$(storeops token create ...)``
works), ``token list`` shows id, name, role and state and never a token,
``token revoke`` revokes; a new token works at once on every service and stops working
on every service within the refresh period after its revocation, also across a
kill -9 and restart of every service; no token is ever written to a service's log.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from services import SERVICES
from storeops_cli.bench.stack import BenchStack
from storeops_cli.runner import wait_ready
from tests.helpers import bearer, eventually

pytestmark = pytest.mark.e2e

REFRESH = 2.0  # seconds between two reads of the token list, in every service of the stack
# a revoked token is refused once each service has read the list again: within REFRESH, plus the
# time the read itself and this test's polling take
SLACK = 1.5
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")  # anything shaped like a token (header.payload.signature)
# one request per service that a service token may make (and a viewer's or an operator's, but ingest's)
PROBES = {"ingest": ("POST", "/v1/events/orders"), "rules": ("GET", "/v1/rules"), "exceptions": ("GET", "/v1/exceptions"),
          "notifier": ("GET", "/v1/notifications"), "audit": ("GET", "/v1/audit")}


@pytest.fixture(scope="module")
def token_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchStack]:
    own = tmp_path_factory.mktemp("token-list")
    extra = {"STOREOPS_AUTH__REFRESH_SECONDS": f"{REFRESH:g}", "STOREOPS_AUTH__KEY_FILE": str(own / "auth.key"),
             "STOREOPS_AUTH__TOKENS_DATABASE_URL": f"sqlite+aiosqlite:///{own / 'auth.db'}"}
    stack = BenchStack.start(env_extra=extra, live_seeds=False)
    try:
        yield stack
        died = [c for c in stack.children.values() if c.proc and c.proc.poll() is not None]
        assert not died, "\n".join(f"{c.name} died ({c.proc.returncode}):\n{c.log_tail()}" for c in died if c.proc)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def seen() -> list[str]:
    """Every token this module made or used: none may be in any log."""
    return []


def storeops(stack: BenchStack, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``storeops`` command with the services' own environment (data dir, key, token list)."""
    return subprocess.run([sys.executable, "-m", "storeops_cli.cli", *args], env=stack.children["rules"].env,
                          capture_output=True, text=True, timeout=60)


def create(stack: BenchStack, seen: list[str], name: str, role: str, *more: str) -> str:
    done = storeops(stack, "token", "create", "--name", name, "--role", role, *more)
    assert done.returncode == 0, done.stderr
    token = done.stdout.splitlines()[-1]
    assert done.stdout == token + "\n", done.stdout  # alone: TOKEN=$(storeops token create ...) holds just it
    seen.append(token)
    return token


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def answers(stack: BenchStack, token: str) -> dict[str, httpx.Response]:
    """Each service's answer to its probe with ``token``."""
    out = {}
    with httpx.Client(timeout=10, headers=bearer(token)) as client:
        for name, (method, path) in PROBES.items():
            body = None
            if method == "POST":
                body = {"type": "OrderPlaced", "source": "tests",
                        "data": {"order_id": f"ord-{uuid.uuid4().hex[:10]}", "customer_id": "c-1", "total": "12.00",
                                 "currency": "EUR"}}
            out[name] = client.request(method, stack.urls[name] + path, json=body)
    return out


def works_as_service(stack: BenchStack, token: str) -> None:
    """A service token: every service answers 2xx."""
    got = answers(stack, token)
    assert {n: r.status_code for n, r in got.items()} == {**dict.fromkeys(PROBES, 200), "ingest": 202}, \
        {n: (r.status_code, r.text[:300]) for n, r in got.items()}


def works_as_operator(stack: BenchStack, token: str) -> None:
    """An operator's token verifies everywhere: 2xx where an operator may read, and ingest (a store
    connector's) knows who it is and answers 403 naming the role needed, not 401."""
    got = answers(stack, token)
    assert {n: r.status_code for n, r in got.items()} == {**dict.fromkeys(PROBES, 200), "ingest": 403}, \
        {n: (r.status_code, r.text[:300]) for n, r in got.items()}
    assert got["ingest"].json()["needed_role"] == "service", got["ingest"].text


def refused_everywhere(got: dict[str, httpx.Response]) -> None:
    for name, response in got.items():
        assert response.status_code == 401, (name, response.status_code, response.text[:300])
        assert response.headers["www-authenticate"].startswith("Bearer"), (name, response.headers)
        [error] = response.json()["errors"]
        assert error["field"] == "Authorization" and "revoked" in error["error"], (name, error)


def stops_within_the_refresh_period(stack: BenchStack, token: str, revoked: float) -> dict[str, float]:
    """Seconds from the revocation until each service refused ``token`` (and keeps refusing it)."""
    stopped: dict[str, float] = {}
    with httpx.Client(timeout=10, headers=bearer(token)) as client:
        while len(stopped) < len(PROBES) and time.monotonic() - revoked < REFRESH + 10:
            for name, (method, path) in PROBES.items():
                if name not in stopped and client.request(method, stack.urls[name] + path, json=[] if method == "POST" else None
                                                          ).status_code == 401:
                    stopped[name] = round(time.monotonic() - revoked, 2)
            time.sleep(0.05)
    assert set(stopped) == set(PROBES), f"still accepted after {REFRESH + 10:g} s by {set(PROBES) - set(stopped)}"
    assert max(stopped.values()) <= REFRESH + SLACK, stopped
    refused_everywhere(answers(stack, token))
    return stopped


def restart_every_service(stack: BenchStack) -> None:
    for name in stack.children:
        stack.kill9(name)
    for name in stack.children:
        stack.restart(name)
    wait_ready(list(stack.children.values()), timeout=90)


def listed(stack: BenchStack) -> str:
    done = storeops(stack, "token", "list")
    assert done.returncode == 0, done.stderr
    assert not JWT.search(done.stdout + done.stderr), "token list printed a token"
    return done.stdout


def row_of(table: str, token_id: str) -> list[str]:
    [line] = [line for line in table.splitlines() if token_id in line]
    return line.split()


def test_create_prints_the_token_alone_list_shows_it_and_revoke_revokes(token_stack: BenchStack, seen: list[str]) -> None:
    stack = token_stack
    token = create(stack, seen, "dana", "operator", "--expires", "30d")
    dana = claims(token)
    assert (dana["iss"], dana["sub"], dana["role"]) == ("storeops", "dana", "operator"), dana
    assert abs(dana["exp"] - (datetime.now(UTC) + timedelta(days=30)).timestamp()) < 120, dana
    works_as_operator(stack, token)

    # as the README has it: TOKEN=$(storeops token create ...) holds the token, and it works
    shell = subprocess.run(["sh", "-c", 'TOKEN=$("$@") && printf "%s" "$TOKEN"', "sh", sys.executable, "-m",
                            "storeops_cli.cli", "token", "create", "--name", "dana", "--role", "operator"],
                           env=stack.children["rules"].env, capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0, shell.stderr
    again = shell.stdout
    seen.append(again)
    assert JWT.fullmatch(again) and claims(again)["sub"] == "dana" and claims(again)["jti"] != dana["jti"], again
    assert "for dana (operator)" in shell.stderr and again not in shell.stderr  # what was made: said on stderr
    works_as_operator(stack, again)

    table = listed(stack)
    assert table.splitlines()[0].split()[:3] == ["id", "name", "role"] and "state" in table.splitlines()[0], table
    for made in (token, again):
        row = row_of(table, claims(made)["jti"])
        assert row[:3] == [claims(made)["jti"], "dana", "operator"] and row[-1] == "active", row
    assert "never" not in row_of(table, dana["jti"]), table  # expires in 30 days
    assert token not in table and again not in table

    revoked = storeops(stack, "token", "revoke", "dana")
    assert revoked.returncode == 0, revoked.stderr
    assert {line.split()[1] for line in revoked.stdout.splitlines()} == {dana["jti"], claims(again)["jti"]}, revoked.stdout
    assert all(f"within {REFRESH:g} s" in line for line in revoked.stdout.splitlines()), revoked.stdout
    assert not JWT.search(revoked.stdout + revoked.stderr)
    table = listed(stack)
    assert row_of(table, dana["jti"])[-1] == "revoked" and row_of(table, claims(again)["jti"])[-1] == "revoked", table

    nothing = storeops(stack, "token", "revoke", "dana")  # nothing active of that name is left
    assert nothing.returncode == 1 and "no active token" in nothing.stderr, (nothing.stdout, nothing.stderr)
    bad = storeops(stack, "token", "create", "--name", "dana", "--role", "operator", "--expires", "0d")
    assert bad.returncode == 2 and bad.stdout == "" and "positive number" in bad.stderr, (bad.stdout, bad.stderr)


async def test_a_token_made_and_revoked_on_the_command_line_is_in_the_audit_trail_with_who(
        token_stack: BenchStack, seen: list[str]) -> None:
    stack = token_stack
    name = f"erin-{uuid.uuid4().hex[:6]}"
    made = create(stack, seen, name, "viewer", "--by", "lead-ops")
    revoked = storeops(stack, "token", "revoke", name, "--by", "sec-team")
    assert revoked.returncode == 0, revoked.stderr
    jti = claims(made)["jti"]

    async def entries() -> list[dict] | None:
        async with stack.async_client(timeout=10) as client:
            page = (await client.get(f"{stack.urls['audit']}/v1/audit", params={"entity": jti})).json()
        found = [i["entry"] for i in page["items"]]
        return found if len(found) == 2 else None
    created, gone = await eventually(entries, timeout=30)
    assert created["action"] == "token.created" and gone["action"] == "token.revoked"
    assert created["actor"] == {"kind": "person", "name": "lead-ops", "role": "admin"}
    assert created["entities"] == [{"type": "token", "id": jti}] and created["after"]["name"] == name
    assert created["after"]["role"] == "viewer" and made not in str(created)  # the token itself is never there
    assert gone["actor"]["name"] == "sec-team" and gone["before"] == {"revoked_at": None} and gone["after"]["revoked_at"]


def test_a_new_token_works_at_once_everywhere_and_stops_within_the_refresh_period_after_revoke(
        token_stack: BenchStack, seen: list[str]) -> None:
    stack = token_stack
    erin = create(stack, seen, "erin", "operator")
    shop = create(stack, seen, "shop-connector", "service")
    works_as_operator(stack, erin)  # at once: each service reads the list on a token id it has not seen
    works_as_service(stack, shop)

    restart_every_service(stack)  # a restarted service reads the list as it starts
    works_as_operator(stack, erin)
    works_as_service(stack, shop)

    done = storeops(stack, "token", "revoke", "erin")
    revoked = time.monotonic()
    assert done.returncode == 0 and claims(erin)["jti"] in done.stdout, done.stderr
    stops_within_the_refresh_period(stack, erin, revoked)
    works_as_service(stack, shop)  # the others still work: refused is that token, not the service
    works_as_service(stack, stack.token)

    restart_every_service(stack)  # revoked stays revoked across a kill -9 and a restart
    refused_everywhere(answers(stack, erin))
    works_as_service(stack, shop)

    done = storeops(stack, "token", "revoke", claims(shop)["jti"])  # by id this time
    revoked = time.monotonic()
    assert done.returncode == 0, done.stderr
    stops_within_the_refresh_period(stack, shop, revoked)
    works_as_service(stack, stack.token)


def test_no_token_reaches_any_service_log(token_stack: BenchStack, seen: list[str]) -> None:
    stack = token_stack
    token = create(stack, seen, "logged", "service")
    works_as_service(stack, token)
    forged = token[: token.rindex(".") + 1] + "AAAA"  # its signature broken: refused, and not logged either
    assert all(r.status_code == 401 for r in answers(stack, forged).values())
    assert storeops(stack, "token", "revoke", "logged").returncode == 0
    stops_within_the_refresh_period(stack, token, time.monotonic())

    logs = {name: stack.children[name].log_path for name in SERVICES}
    texts = {name: Path(path).read_text(errors="replace") for name, path in logs.items()}
    assert all(texts.values()), {n: len(t) for n, t in texts.items()}  # each service did log
    for made in [*seen, stack.token]:
        _, payload, signature = made.split(".")
        for name, text in texts.items():
            assert made not in text, f"a token in {logs[name]}"
            assert payload not in text and signature not in text, f"part of a token in {logs[name]}"
    assert not any(forged in text for text in texts.values())
    for name, text in texts.items():
        assert not JWT.search(text), f"something shaped like a token in {logs[name]}: {JWT.search(text)}"
