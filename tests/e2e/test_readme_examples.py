"""The README's curl examples, run in the order a reader meets them, against a fresh stack
started as ``./run up`` starts one (seed rules in DRY_RUN, SQLite files, a broker of its own,
an admin token kept in ``<data dir>/admin.token``).

Each ``curl`` in a ``sh`` block or in inline code is parsed (its -s, -H, -d and -X) and
sent to the service whose default port it names; ``$ID`` is the exception the first
example raised, ``$TOKEN`` what an ``export TOKEN=$(cat .storeops-data/admin.token)`` line
before it read (the README's default data directory is the fresh stack's). Every example
must answer 2xx with a JSON body, and 401 without its Authorization header. An example
using a curl option this test does not know fails here, so a new kind of example is run too.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from services import SERVICES, load_spec, service_port
from storeops.settings import Settings
from storeops_cli import access
from storeops_cli.bench.stack import BenchStack
from storeops_cli.runner import SEED_RULES, rules_summary, seeds_live
from tests.helpers import isolated_stack

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
PORTS = {service_port(load_spec(name)): name for name in SERVICES}
DATA_DIR = Settings.model_fields["data_dir"].default  # .storeops-data, where the README's examples read files
# export TOKEN=$(cat .storeops-data/admin.token): a variable read from a file
EXPORT = re.compile(r"^export (\w+)=\$\(cat ([^()\s]+)\)$")


def examples(text: str) -> list[str]:
    """Every curl command and every ``export NAME=$(cat FILE)`` line of a Markdown text, in
    order: from sh blocks (continuation lines joined) and curl commands from inline code."""
    found: list[tuple[int, str]] = []
    for block in re.finditer(r"```sh\n(.*?)```", text, re.S):
        joined = block.group(1).replace("\\\n", " ")
        offset = block.start()
        for line in joined.splitlines():
            if line.strip().startswith("curl ") or EXPORT.match(line.strip()):
                found.append((offset, line.strip()))
                offset += 1
    for inline in re.finditer(r"`(curl [^`\n]+)`", text):
        found.append((inline.start(), inline.group(1)))
    return [command for _, command in sorted(found)]


def curl_examples(text: str) -> list[str]:
    """Every curl command of a Markdown text, in order."""
    return [command for command in examples(text) if command.startswith("curl ")]


def exported(line: str, data_dir: Path) -> tuple[str, str]:
    """(name, value) of an ``export NAME=$(cat FILE)`` line: FILE is read from ``data_dir``
    where it names the default data directory."""
    found = EXPORT.match(line)
    assert found, line
    name, file = found.groups()
    try:
        where = data_dir / Path(file).relative_to(DATA_DIR)
    except ValueError:
        raise AssertionError(f"{line!r} reads {file}, which is not in the data directory ({DATA_DIR})") from None
    assert where.is_file(), f"{line!r}: there is no {where}"
    return name, where.read_text().strip()


def parse(command: str, variables: dict[str, str]) -> tuple[str, dict[str, str], str | None, str, str]:
    """A curl command's method, headers, data, the service whose default port it names, and the path."""
    def expand(word: str) -> str:
        def value(m: re.Match[str]) -> str:
            assert m.group(1) in variables, f"${m.group(1)} in {command!r} is set by no example before it"
            return variables[m.group(1)]
        return re.sub(r"\$(\w+)", value, word)

    words = shlex.split(command, comments=True)
    assert words[0] == "curl", command
    method, headers, data, url = None, {}, None, None
    rest = iter(words[1:])
    for word in rest:
        if word in ("-s", "-sS", "--silent"):
            continue
        if word in ("-H", "--header"):
            name, _, value = expand(next(rest)).partition(":")
            headers[name.strip()] = value.strip()
        elif word in ("-d", "--data"):
            data = expand(next(rest))
        elif word in ("-X", "--request"):
            method = next(rest)
        elif word.startswith("-"):
            raise AssertionError(f"curl option {word} in {command!r}: teach this test what it does")
        else:
            url = expand(word)
    assert url is not None, command
    parts = urlsplit(url if "://" in url else f"http://{url}")
    assert parts.hostname == "localhost" and parts.port in PORTS, f"{command!r} names no service's default port"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return method or ("POST" if data is not None else "GET"), headers, data, PORTS[parts.port], path


def request_of(command: str, urls: dict[str, str], variables: dict[str, str]) -> httpx.Request:
    method, headers, data, service, path = parse(command, variables)
    return httpx.Request(method, urls[service] + path, headers=headers, content=data.encode() if data is not None else None)


def without_authorization(request: httpx.Request) -> httpx.Request:
    headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
    return httpx.Request(request.method, request.url, headers=headers, content=request.content)


def refused_without_a_token(client: httpx.Client, request: httpx.Request, command: str) -> None:
    assert "authorization" in request.headers, f"{command}: sends no Authorization header"
    response = client.send(without_authorization(request))
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer"), \
        f"{command} without its token\n-> {response.status_code} {response.text[:1000]}"
    assert [e["field"] for e in response.json()["errors"]] == ["Authorization"], response.text


@pytest.fixture(scope="module")
def fresh_stack(database_url: str) -> Iterator[tuple[BenchStack, str]]:
    """The stack, and the admin token ``up`` keeps in its data directory (``admin.token``)."""
    with isolated_stack("sqlite", database_url, "storeops_readme") as stack:
        assert stack.data_dir is not None
        token, path, new = access.kept_token(Settings(data_dir=stack.data_dir))
        assert new and path == stack.data_dir / "admin.token"
        yield stack, token


def test_the_readme_has_curl_examples_for_every_service_it_documents() -> None:
    found = curl_examples(README.read_text())
    named = {parse(e, {"ID": "x", "TOKEN": "t"})[3] for e in found}
    assert {"ingest", "exceptions", "notifier", "audit"} <= named, named
    assert all(parse(e, {"ID": "x", "TOKEN": "t"})[1].get("Authorization") == "Bearer t" for e in found), found


def test_up_says_which_rules_act_and_the_readme_examples_answer(fresh_stack: tuple[BenchStack, str]) -> None:
    stack, admin = fresh_stack
    rules = stack.urls["rules"]
    dry = rules_summary(rules, admin)
    assert dry[0].startswith(f"rules: 0 of {len(SEED_RULES)} act"), dry
    for seed in SEED_RULES:
        assert any(line.split()[:3] == ["DRY_RUN", "active", seed] for line in dry), (seed, dry)
    assert any("/v1/rules/runs?mode=DRY_RUN" in line for line in dry)

    variables: dict[str, str] = {}
    with httpx.Client(timeout=30) as client:
        for command in examples(README.read_text()):
            if command.startswith("export "):
                assert stack.data_dir is not None
                name, variables[name] = exported(command, stack.data_dir)
                continue
            assert variables.get("TOKEN") == admin, f"{command}: no export of the admin token before it"
            if "$ID" in command and "ID" not in variables:
                found = _eventually(client, f"{stack.urls['exceptions']}/v1/exceptions?entity_id=ord-1", admin)
                variables["ID"] = found[0]["id"]
            request = request_of(command, stack.urls, variables)
            refused_without_a_token(client, request, command)
            response = client.send(request)
            assert 200 <= response.status_code < 300, f"{command}\n-> {response.status_code} {response.text[:1000]}"
            body = response.json()
            if request.method == "GET" and "items" in body:
                # the first example's order (2,500 EUR) is a high-value order: the LIVE seed raises it, the
                # feed announces it, the audit trail keeps it; each list shows it once the pipeline has run
                items = _eventually(client, str(request.url), admin)
                assert any("ord-1" in str(item) for item in items), f"{command}: {items}"
    assert rules_summary(rules, admin)[0].startswith(f"rules: 1 of {len(SEED_RULES)} act"), "the README lets one rule act"
    history = httpx.get(f"{rules}/v1/rules/high-value-order/history", headers=access.bearer(admin), timeout=30).json()
    assert any(change["actor"] == "admin" for change in history["items"]), history  # the token's name, not a body's

    # the summary's own examples, with the token up prints how to export: what each rule did or would
    # have done, and "let one act" for every other seed (what --demo does)
    summary = {"TOKEN": admin}
    runs = next(line for line in dry if "what each did" in line).split(": ", 1)[1].split(" (or ", 1)[0]
    with httpx.Client(timeout=30) as client:
        request = request_of(runs.replace(rules, "localhost:8002"), stack.urls, summary)
        refused_without_a_token(client, request, runs)
        response = client.send(request)
        assert response.status_code == 200 and "items" in response.json(), response.text
    let_act = next(line for line in dry if "let one act:" in line).split("let one act: ", 1)[1]
    with httpx.Client(timeout=30) as client:
        for seed in SEED_RULES:
            if seed == "high-value-order":
                continue
            command = let_act.replace("<id>", seed).replace(rules, "localhost:8002")
            request = request_of(command, stack.urls, summary)
            refused_without_a_token(client, request, command)
            response = client.send(request)
            assert response.status_code == 200 and response.json()["mode"] == "LIVE", response.text
    assert seeds_live(rules, admin, "already LIVE") == []
    assert rules_summary(rules, admin)[0].startswith(f"rules: {len(SEED_RULES)} of {len(SEED_RULES)} act")


def _eventually(client: httpx.Client, url: str, token: str, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = client.get(url, headers=access.bearer(token)).json()["items"]
        if items:
            return items
        time.sleep(0.2)
    raise AssertionError(f"{url} listed nothing within {timeout} s")
