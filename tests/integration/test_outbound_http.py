"""``storeops.outbound.Client`` against a real HTTP receiver on 127.0.0.1 (uvicorn in a thread):
reached only when allowed, every redirect hop checked, a name connected to the address that was
checked (also when it rebinds), and for https the certificate checked against the name, not the
address. A scripted name server stands in for DNS where a test needs a name with several
addresses or one that changes."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from storeops import outbound
from storeops.outbound import Client, OutboundRefused, SendFailed
from storeops_cli.broker import free_port

LOOPBACK_ONE = (ipaddress.ip_network("127.0.0.1/32"),)
METHODS = ["GET", "POST", "PUT", "HEAD"]


@dataclass
class Receiver:
    """Records every request; ``/redirect?to=URL&status=N`` answers a redirect, ``/loop`` to itself."""

    certfile: Path | None = None
    keyfile: Path | None = None
    port: int = field(default_factory=free_port)
    seen: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        app = Starlette(routes=[Route("/echo", self._echo, methods=METHODS),
                                Route("/stall", self._stall, methods=METHODS),
                                Route("/long", self._long, methods=METHODS),
                                Route("/redirect", self._redirect, methods=METHODS),
                                Route("/loop", self._loop, methods=METHODS)])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off", ssl_certfile=self.certfile, ssl_keyfile=self.keyfile))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def _record(self, request: Request) -> None:
        self.seen.append({"method": request.method, "path": request.url.path, "query": request.url.query,
                          "host": request.headers.get("host"), "body": await request.body(),
                          "authorization": request.headers.get("authorization"),
                          "connection": request.headers.get("connection"), "server": request.scope["server"][0]})

    async def _echo(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"ok": True})

    async def _stall(self, request: Request) -> Response:
        await asyncio.sleep(3)
        return JSONResponse({"late": True})

    async def _long(self, request: Request) -> Response:
        return Response(b"x" * 1_000_000)

    async def _redirect(self, request: Request) -> Response:
        await self._record(request)
        return Response(status_code=int(request.query_params.get("status", "302")),
                        headers={"location": request.query_params["to"]})

    async def _loop(self, request: Request) -> Response:
        await self._record(request)
        return Response(status_code=302, headers={"location": "/loop"})

    def __enter__(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the receiver did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def running() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture
def receiver(running: Receiver) -> Receiver:
    running.seen.clear()
    return running


def client(allow: Sequence[outbound.Network] = LOOPBACK_ONE, **options: Any) -> Client:
    return Client(allow, timeout=5, **options)


def scripted(answers: dict[str, list[list[str]]]) -> Callable[[str, int], Awaitable[list[outbound.Address]]]:
    """A name server that answers each name with the next of its lists (the last one again when used up)."""
    asked: dict[str, int] = {}

    async def lookup(host: str, port: int) -> list[outbound.Address]:
        n = asked[host] = asked.get(host, -1) + 1
        return [ipaddress.ip_address(a) for a in answers[host][min(n, len(answers[host]) - 1)]]
    return lookup


# --- allowed or not ---------------------------------------------------------------------------


async def test_an_allowed_receiver_is_reached(receiver: Receiver) -> None:
    async with client() as c:
        answer = await c.send("POST", f"http://127.0.0.1:{receiver.port}/echo", content=b'{"order": 7}', params={"n": "1"})
    assert answer.status == 200 and answer.json() == {"ok": True} and answer.history == ()
    [seen] = receiver.seen
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/echo", "n=1")
    assert (seen["host"], seen["body"]) == (f"127.0.0.1:{receiver.port}", b'{"order": 7}')


@pytest.mark.parametrize("allow", [(), (ipaddress.ip_network("10.0.0.0/8"),), (ipaddress.ip_network("127.0.0.2/32"),)])
async def test_a_receiver_not_allowed_sees_nothing(receiver: Receiver, allow: tuple[ipaddress.IPv4Network, ...]) -> None:
    async with client(allow) as c:
        for url in (f"http://127.0.0.1:{receiver.port}/echo", f"http://localhost:{receiver.port}/echo",
                    f"http://2130706433:{receiver.port}/echo", f"http://[::ffff:127.0.0.1]:{receiver.port}/echo",
                    f"http://0x7f.1:{receiver.port}/echo"):
            with pytest.raises(OutboundRefused, match="loopback"):
                await c.send("POST", url, content=b"secret")
    assert receiver.seen == []


async def test_a_name_connects_to_the_address_that_was_checked(receiver: Receiver) -> None:
    async with client() as c:
        answer = await c.send("GET", f"http://localhost:{receiver.port}/echo")
    assert answer.status == 200
    [seen] = receiver.seen
    assert (seen["host"], seen["server"]) == (f"localhost:{receiver.port}", "127.0.0.1")


async def test_a_name_that_rebinds_to_a_refused_address_is_refused_at_its_next_connection(receiver: Receiver) -> None:
    # The name's owner answers an allowed address first and a refused one afterwards (a short TTL):
    # the connection made after the change is refused, nothing reaches the receiver through it.
    lookup = scripted({"rebind.example": [["127.0.0.1"], ["127.0.0.2"]]})
    url = f"http://rebind.example:{receiver.port}/echo"
    async with client(lookup=lookup, keep_alive=False, dns_cache_seconds=0) as c:  # each request a new lookup
        assert (await c.send("GET", url)).status == 200
        with pytest.raises(OutboundRefused, match="rebind.example resolves to 127.0.0.2, a loopback address"):
            await c.send("GET", url)
    assert [s["host"] for s in receiver.seen] == [f"rebind.example:{receiver.port}"]


async def test_an_odd_spelling_is_checked_and_connected_as_its_address(receiver: Receiver) -> None:
    async with client() as c:
        answer = await c.send("GET", f"http://0x7f.1:{receiver.port}/echo")
    assert answer.status == 200 and receiver.seen[0]["server"] == "127.0.0.1"
    assert receiver.seen[0]["host"] == f"0x7f.1:{receiver.port}"


async def test_an_allowed_address_that_does_not_answer_fails_to_connect(receiver: Receiver) -> None:
    async with client([ipaddress.ip_network("127.0.0.0/8")]) as c:
        with pytest.raises(SendFailed, match="Cannot connect") as failed:
            await c.send("GET", f"http://127.0.0.2:{receiver.port}/echo")
    assert not failed.value.timed_out and receiver.seen == []


async def test_the_next_checked_address_is_tried_when_one_does_not_connect(receiver: Receiver) -> None:
    lookup = scripted({"two.example": [["127.0.0.2", "127.0.0.1"]]})
    async with client([ipaddress.ip_network("127.0.0.0/8")], lookup=lookup) as c:
        answer = await c.send("GET", f"http://two.example:{receiver.port}/echo")
    assert answer.status == 200 and receiver.seen[0]["host"] == f"two.example:{receiver.port}"


async def test_one_refused_address_of_a_name_refuses_the_name(receiver: Receiver) -> None:
    lookup = scripted({"mixed.example": [["127.0.0.1", "10.0.0.7"]]})
    async with client(lookup=lookup) as c:
        with pytest.raises(OutboundRefused, match="mixed.example resolves to 10.0.0.7, a private address"):
            await c.send("GET", f"http://mixed.example:{receiver.port}/echo")
    assert receiver.seen == []


async def test_a_name_that_does_not_resolve_is_refused_saying_so() -> None:
    async with client() as c:
        with pytest.raises(OutboundRefused, match="hooks.invalid does not resolve"):
            await c.send("GET", "http://hooks.invalid/")


async def test_no_answer_within_the_timeout_is_a_timed_out_failure(receiver: Receiver) -> None:
    async with Client(LOOPBACK_ONE, timeout=0.3) as c:
        with pytest.raises(SendFailed, match="no answer within 0.3 s") as failed:
            await c.send("GET", f"http://127.0.0.1:{receiver.port}/stall")
    assert failed.value.timed_out


async def test_only_the_first_bytes_of_a_long_answer_are_read(receiver: Receiver) -> None:
    async with client(read_limit=100) as c:
        answer = await c.send("GET", f"http://127.0.0.1:{receiver.port}/long")
        assert answer.status == 200 and answer.body == b"x" * 100
        assert (await c.send("GET", f"http://127.0.0.1:{receiver.port}/echo")).status == 200  # the next one still goes


# --- redirects --------------------------------------------------------------------------------


def _redirect(receiver: Receiver, to: str, status: int = 302) -> str:
    return str(httpx.URL(f"http://127.0.0.1:{receiver.port}/redirect", params={"to": to, "status": str(status)}))


@pytest.mark.parametrize(("to", "why"), [
    ("http://127.0.0.2:{port}/echo", "127.0.0.2 is a loopback address"),
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "the cloud metadata service"),
    ("http://[::1]:{port}/echo", "::1 is a loopback address"),
    ("http://10.1.2.3/", "10.1.2.3 is a private address"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("http://hooks.invalid/", "hooks.invalid does not resolve"),
])
async def test_a_redirect_to_a_refused_address_is_refused_at_that_hop(receiver: Receiver, to: str, why: str) -> None:
    async with client() as c:
        with pytest.raises(OutboundRefused, match=re.escape(why)):
            await c.send("POST", _redirect(receiver, to.format(port=receiver.port), 307), content=b"secret")
    assert [s["path"] for s in receiver.seen] == ["/redirect"]  # the first hop was allowed, the second not sent


async def test_a_redirect_to_no_url_fails(receiver: Receiver) -> None:
    async with client() as c:
        with pytest.raises(SendFailed, match="Location is not a valid URL"):
            await c.send("GET", _redirect(receiver, "http://[::1"))
    assert [s["path"] for s in receiver.seen] == ["/redirect"]


@pytest.mark.parametrize(("status", "sent", "method", "body"), [
    (302, "POST", "GET", b""), (303, "POST", "GET", b""), (301, "POST", "GET", b""), (302, "PUT", "GET", b""),
    (301, "PUT", "PUT", b"payload"), (307, "post", "POST", b"payload"), (308, "POST", "POST", b"payload")])
async def test_a_redirect_to_an_allowed_path_is_followed(receiver: Receiver, status: int, sent: str, method: str,
                                                         body: bytes) -> None:
    async with client() as c:
        answer = await c.send(sent, _redirect(receiver, "/echo", status), content=b"payload",
                              headers={"Authorization": "Bearer same-origin"})
    assert answer.status == 200 and [r.status for r in answer.history] == [status]
    first, second = receiver.seen
    assert (first["method"], first["body"], second["path"]) == (sent.upper(), b"payload", "/echo")
    assert (second["method"], second["body"], second["authorization"]) == (method, body, "Bearer same-origin")


async def test_a_redirect_is_the_answer_when_none_may_be_followed(receiver: Receiver) -> None:
    async with client() as c:
        answer = await c.send("POST", _redirect(receiver, "/echo", 307), content=b"x", max_redirects=None)
    assert answer.status == 307 and answer.is_redirect and [s["path"] for s in receiver.seen] == ["/redirect"]


async def test_a_redirect_to_another_origin_drops_the_authorization(receiver: Receiver) -> None:
    to = f"http://localhost:{receiver.port}/echo"  # another name, same receiver
    async with client() as c:
        answer = await c.send("POST", _redirect(receiver, to, 307), content=b"x", headers={"Authorization": "Bearer s3cret"})
    assert answer.status == 200
    first, second = receiver.seen
    assert (first["authorization"], second["authorization"]) == ("Bearer s3cret", None)
    assert second["host"] == f"localhost:{receiver.port}"


@pytest.mark.parametrize("max_redirects", [0, 2])
async def test_too_many_redirects_are_refused(receiver: Receiver, max_redirects: int) -> None:
    async with client() as c:
        with pytest.raises(OutboundRefused, match=f"more than {max_redirects} redirects"):
            await c.send("GET", f"http://127.0.0.1:{receiver.port}/loop", max_redirects=max_redirects)
    assert [s["path"] for s in receiver.seen] == ["/loop"] * (max_redirects + 1)


# --- https: the name's certificate on the checked address -------------------------------------


def _certificates(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a certificate for DNS name ``name`` only (no IP address in it): CA, cert, key files."""
    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "storeops test CA")])

    def build(subject: x509.Name, public: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(hours=1))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))

    ca = (build(ca_name, ca_key.public_key()).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return files


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Receiver, Path]]:
    ca, cert, key = _certificates(tmp_path_factory.mktemp("tls"), "localhost")
    with Receiver(certfile=cert, keyfile=key) as receiver:
        yield receiver, ca


async def test_https_checks_the_names_certificate_on_the_checked_address(tls: tuple[Receiver, Path]) -> None:
    receiver, ca = tls
    receiver.seen.clear()
    async with client(ssl_context=ssl.create_default_context(cafile=ca)) as c:
        answer = await c.send("POST", f"https://localhost:{receiver.port}/echo", content=b"tls")
        assert answer.status == 200
        [seen] = receiver.seen
        assert (seen["host"], seen["body"], seen["server"]) == (f"localhost:{receiver.port}", b"tls", "127.0.0.1")
        # the certificate names localhost, not 127.0.0.1: the name, not the address, is what is checked
        with pytest.raises(SendFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await c.send("POST", f"https://127.0.0.1:{receiver.port}/echo", content=b"tls")
    assert len(receiver.seen) == 1
