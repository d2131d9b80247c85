"""``storeops.outbound.send`` against a real HTTP receiver on 127.0.0.1 (uvicorn in a thread):
reached only when allowed, every redirect hop checked, a name pinned to the address that was
checked, and for https the certificate checked against the name, not the address."""

from __future__ import annotations

import ipaddress
import re
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
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
from storeops.outbound import OutboundRefused, send
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


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as c:
        yield c


# --- allowed or not ---------------------------------------------------------------------------


async def test_an_allowed_receiver_is_reached(receiver: Receiver, client: httpx.AsyncClient) -> None:
    response = await send(client, "POST", f"http://127.0.0.1:{receiver.port}/echo", LOOPBACK_ONE,
                          content=b'{"order": 7}', params={"n": "1"})
    assert response.status_code == 200 and response.json() == {"ok": True} and response.history == []
    [seen] = receiver.seen
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/echo", "n=1")
    assert (seen["host"], seen["body"]) == (f"127.0.0.1:{receiver.port}", b'{"order": 7}')


@pytest.mark.parametrize("allow", [(), (ipaddress.ip_network("10.0.0.0/8"),), (ipaddress.ip_network("127.0.0.2/32"),)])
async def test_a_receiver_not_allowed_sees_nothing(receiver: Receiver, client: httpx.AsyncClient,
                                                   allow: tuple[ipaddress.IPv4Network, ...]) -> None:
    for url in (f"http://127.0.0.1:{receiver.port}/echo", f"http://localhost:{receiver.port}/echo",
                f"http://2130706433:{receiver.port}/echo", f"http://[::ffff:127.0.0.1]:{receiver.port}/echo"):
        with pytest.raises(OutboundRefused, match="loopback"):
            await send(client, "POST", url, allow, content=b"secret")
    assert receiver.seen == []


async def test_a_name_is_pinned_to_the_address_it_was_checked_at(receiver: Receiver, client: httpx.AsyncClient) -> None:
    response = await send(client, "GET", f"http://localhost:{receiver.port}/echo", LOOPBACK_ONE)
    assert response.status_code == 200
    assert response.request.url.host == "127.0.0.1"  # connected to the checked address, no second lookup
    [seen] = receiver.seen
    assert (seen["host"], seen["server"]) == (f"localhost:{receiver.port}", "127.0.0.1")


async def test_an_odd_spelling_is_pinned_too(receiver: Receiver, client: httpx.AsyncClient) -> None:
    response = await send(client, "GET", f"http://0x7f.1:{receiver.port}/echo", LOOPBACK_ONE)
    assert response.status_code == 200 and response.request.url.host == "127.0.0.1"
    assert receiver.seen[0]["host"] == f"0x7f.1:{receiver.port}"


async def test_an_allowed_address_that_does_not_answer_fails_to_connect(receiver: Receiver,
                                                                       client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await send(client, "GET", f"http://127.0.0.2:{receiver.port}/echo", [ipaddress.ip_network("127.0.0.0/8")])
    assert receiver.seen == []


async def test_the_next_checked_address_is_tried_when_one_does_not_connect(receiver: Receiver,
                                                                          client: httpx.AsyncClient) -> None:
    # What a name with two addresses does; no resolver here gives localhost two IPv4 addresses.
    url = httpx.URL(f"http://localhost:{receiver.port}/echo")
    two = [ipaddress.IPv4Address("127.0.0.2"), ipaddress.IPv4Address("127.0.0.1")]
    response = await outbound._pinned(client, "GET", url, list(two), httpx.Headers(), {})
    assert response.status_code == 200 and response.request.url.host == "127.0.0.1"
    assert receiver.seen[0]["host"] == f"localhost:{receiver.port}"


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
async def test_a_redirect_to_a_refused_address_is_refused_at_that_hop(receiver: Receiver, client: httpx.AsyncClient,
                                                                      to: str, why: str) -> None:
    with pytest.raises(OutboundRefused, match=re.escape(why)):
        await send(client, "POST", _redirect(receiver, to.format(port=receiver.port), 307), LOOPBACK_ONE,
                   content=b"secret")
    assert [s["path"] for s in receiver.seen] == ["/redirect"]  # the first hop was allowed, the second not sent


async def test_a_redirect_to_no_url_fails(receiver: Receiver, client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.RemoteProtocolError, match="Invalid URL in location header"):
        await send(client, "GET", _redirect(receiver, "http://[::1"), LOOPBACK_ONE)
    assert [s["path"] for s in receiver.seen] == ["/redirect"]


@pytest.mark.parametrize(("status", "sent", "method", "body"), [
    (302, "POST", "GET", b""), (303, "POST", "GET", b""), (301, "POST", "GET", b""), (302, "PUT", "GET", b""),
    (301, "PUT", "PUT", b"payload"), (307, "post", "POST", b"payload"), (308, "POST", "POST", b"payload")])
async def test_a_redirect_to_an_allowed_path_is_followed(receiver: Receiver, client: httpx.AsyncClient,
                                                         status: int, sent: str, method: str, body: bytes) -> None:
    response = await send(client, sent, _redirect(receiver, "/echo", status), LOOPBACK_ONE, content=b"payload",
                          headers={"Authorization": "Bearer same-origin"})
    assert response.status_code == 200 and [r.status_code for r in response.history] == [status]
    first, second = receiver.seen
    assert (first["method"], first["body"], second["path"]) == (sent.upper(), b"payload", "/echo")
    assert (second["method"], second["body"], second["authorization"]) == (method, body, "Bearer same-origin")


async def test_a_redirect_to_another_origin_drops_the_authorization(receiver: Receiver,
                                                                   client: httpx.AsyncClient) -> None:
    to = f"http://localhost:{receiver.port}/echo"  # another name, same receiver
    response = await send(client, "POST", _redirect(receiver, to, 307), LOOPBACK_ONE, content=b"x",
                          headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    first, second = receiver.seen
    assert (first["authorization"], second["authorization"]) == ("Bearer s3cret", None)
    assert second["host"] == f"localhost:{receiver.port}"


@pytest.mark.parametrize("max_redirects", [0, 2])
async def test_too_many_redirects_are_refused(receiver: Receiver, client: httpx.AsyncClient, max_redirects: int) -> None:
    with pytest.raises(OutboundRefused, match=f"more than {max_redirects} redirects"):
        await send(client, "GET", f"http://127.0.0.1:{receiver.port}/loop", LOOPBACK_ONE, max_redirects=max_redirects)
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


async def test_https_checks_the_names_certificate_on_the_pinned_address(tls: tuple[Receiver, Path]) -> None:
    receiver, ca = tls
    receiver.seen.clear()
    async with httpx.AsyncClient(timeout=5, trust_env=False, verify=ssl.create_default_context(cafile=ca)) as client:
        response = await send(client, "POST", f"https://localhost:{receiver.port}/echo", LOOPBACK_ONE, content=b"tls")
        assert response.status_code == 200 and response.request.url.host == "127.0.0.1"
        [seen] = receiver.seen
        assert (seen["host"], seen["body"], seen["connection"]) == (f"localhost:{receiver.port}", b"tls", "close")
        # the certificate names localhost, not 127.0.0.1: had the address been checked, the first send failed
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await send(client, "POST", f"https://127.0.0.1:{receiver.port}/echo", LOOPBACK_ONE, content=b"tls")
    assert len(receiver.seen) == 1
