"""The README's curl examples, run in the order a reader meets them, against a fresh stack
started as ``./run up`` starts one (seed rules in DRY_RUN, SQLite files, a broker of its own).

Each ``curl`` in a ``sh`` block or in inline code is parsed (its -s, -H, -d and -X) and
sent to the service whose default port it names; ``$ID`` is the exception the first
example raised. Every example must answer 2xx with a JSON body. An example using a curl
option this test does not know fails here, so a new kind of example is run too.
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
from storeops_cli.bench.stack import BenchStack
from storeops_cli.runner import SEED_RULES, rules_summary, seeds_live
from tests.helpers import isolated_stack

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
PORTS = {service_port(load_spec(name)): name for name in SERVICES}


def curl_examples(text: str) -> list[str]:
    """Every curl command of a Markdown text, in order: from sh blocks (continuation lines
    joined) and from inline code."""
    found: list[tuple[int, str]] = []
    for block in re.finditer(r"```sh\n(.*?)```", text, re.S):
        joined = block.group(1).replace("\\\n", " ")
        offset = block.start()
        for line in joined.splitlines():
            if line.strip().startswith("curl "):
                found.append((offset, line.strip()))
                offset += 1
    for inline in re.finditer(r"`(curl [^`\n]+)`", text):
        found.append((inline.start(), inline.group(1)))
    return [command for _, command in sorted(found)]


def parse(command: str, variables: dict[str, str]) -> tuple[str, dict[str, str], str | None, str, str]:
    """A curl command's method, headers, data, the service whose default port it names, and the path."""
    def expand(word: str) -> str:
        return re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], word)

    words = shlex.split(command, comments=True)
    assert words[0] == "curl", command
    method, headers, data, url = None, {}, None, None
    rest = iter(words[1:])
    for word in rest:
        if word in ("-s", "-sS", "--silent"):
            continue
        if word in ("-H", "--header"):
            name, _, value = next(rest).partition(":")
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


@pytest.fixture(scope="module")
def fresh_stack(database_url: str) -> Iterator[BenchStack]:
    with isolated_stack("sqlite", database_url, "storeops_readme") as stack:
        yield stack


def test_the_readme_has_curl_examples_for_every_service_it_documents() -> None:
    examples = curl_examples(README.read_text())
    named = {parse(e, {"ID": "x"})[3] for e in examples}
    assert {"ingest", "exceptions", "notifier", "audit"} <= named, named


def test_up_says_which_rules_act_and_the_readme_examples_answer(fresh_stack: BenchStack) -> None:
    rules = fresh_stack.urls["rules"]
    dry = rules_summary(rules)
    assert dry[0].startswith(f"rules: 0 of {len(SEED_RULES)} act"), dry
    for seed in SEED_RULES:
        assert any(line.split()[:3] == ["DRY_RUN", "active", seed] for line in dry), (seed, dry)
    assert any("/v1/rules/runs?mode=DRY_RUN" in line for line in dry)

    variables: dict[str, str] = {}
    with httpx.Client(timeout=30) as client:
        for command in curl_examples(README.read_text()):
            if "$ID" in command and "ID" not in variables:
                found = _eventually(client, f"{fresh_stack.urls['exceptions']}/v1/exceptions?entity_id=ord-1")
                variables["ID"] = found[0]["id"]
            request = request_of(command, fresh_stack.urls, variables)
            response = client.send(request)
            assert 200 <= response.status_code < 300, f"{command}\n-> {response.status_code} {response.text[:1000]}"
            body = response.json()
            if request.method == "GET" and "items" in body:
                # the first example's order (2,500 EUR) is a high-value order: the LIVE seed raises it, the
                # feed announces it, the audit trail keeps it; each list shows it once the pipeline has run
                items = _eventually(client, str(request.url))
                assert any("ord-1" in str(item) for item in items), f"{command}: {items}"
    assert rules_summary(rules)[0].startswith(f"rules: 1 of {len(SEED_RULES)} act"), "the README lets one rule act"

    # the summary's own "let one act" example, for every other seed (what --demo does)
    let_act = next(line for line in dry if "let one act:" in line).split("let one act: ", 1)[1]
    with httpx.Client(timeout=30) as client:
        for seed in SEED_RULES:
            if seed == "high-value-order":
                continue
            command = let_act.replace("<id>", seed).replace("<you>", "readme").replace(rules, "localhost:8002")
            response = client.send(request_of(command, fresh_stack.urls, {}))
            assert response.status_code == 200 and response.json()["mode"] == "LIVE", response.text
    assert seeds_live(rules, "readme", "already LIVE") == []
    assert rules_summary(rules)[0].startswith(f"rules: {len(SEED_RULES)} of {len(SEED_RULES)} act")


def _eventually(client: httpx.Client, url: str, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = client.get(url).json()["items"]
        if items:
            return items
        time.sleep(0.2)
    raise AssertionError(f"{url} listed nothing within {timeout} s")
