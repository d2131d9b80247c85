"""Outbound requests (storeops/outbound.py): which URLs are refused at save time and why, the
send-time check of resolved addresses, and the allow list's setting."""

from __future__ import annotations

import ipaddress
import os

import pytest
from pydantic import ValidationError

from storeops.outbound import OutboundRefused, checked_addresses, refusal
from storeops.settings import OutboundSettings, Settings

LOOPBACK_ONE = (ipaddress.ip_network("127.0.0.1/32"),)

REFUSED = [
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "link-local address: the cloud metadata"),
    ("http://127.0.0.1:8005/v1/audit", "127.0.0.1 is a loopback"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme 'gopher'"),
    ("ftp://example.com/", "scheme 'ftp'"),
    ("data:text/plain,hi", "scheme 'data'"),
    ("javascript:alert(1)", "scheme 'javascript'"),
    ("example.com/hook", "scheme '(none)'"),
    ("http:///hook", "no host"),
    ("http://user:pw@example.com/", "credentials in the URL"),
    ("http://[::1]/", "::1 is a loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback address (it embeds 127.0.0.1)"),
    ("http://[2002:7f00:1::]/", "loopback address (it embeds 127.0.0.1)"),  # 6to4
    ("http://2130706433/", "127.0.0.1 is a loopback"),
    ("http://0x7f.1/", "127.0.0.1 is a loopback"),
    ("http://0177.0.0.1/", "not a valid URL (Invalid IPv4 address: '0177.0.0.1'); and 127.0.0.1 is a loopback"),
    ("http://0177.1/", "127.0.0.1 is a loopback"),
    ("http://127.1/", "127.0.0.1 is a loopback"),
    ("http://127.0.0.1./", "127.0.0.1 is a loopback"),
    ("http://localhost:8080/", "localhost resolves to 127.0.0.1, a loopback"),
    ("http://foo.localhost/", "foo.localhost is a localhost name"),
    ("http://10.1.2.3/", "10.1.2.3 is a private"),
    ("http://172.16.5.4/", "172.16.5.4 is a private"),
    ("http://192.168.0.1/", "192.168.0.1 is a private"),
    ("http://[fd00::1]/", "fd00::1 is a private"),
    ("http://100.64.0.1/", "shared address space 100.64.0.0/10"),
    ("http://0.0.0.0/", "0.0.0.0 is an unspecified"),
    ("http://[::]/", ":: is an unspecified"),
    ("http://[fe80::1]/", "fe80::1 is a link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://[fec0::1]/", "site-local"),
    ("http://192.0.2.1/", "not a globally reachable"),
    ("http://[::1/", "not a valid URL"),
]

ACCEPTED = [
    "https://hooks.example.com/x",  # does not resolve here: checked again at send time
    "https://93.184.216.34/",
    "http://[::ffff:93.184.216.34]/",
    "https://hooks.invalid/x",
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_refused_at_save_time_saying_why(url: str, why: str) -> None:
    reason = refusal(url)
    assert reason is not None and why in reason, reason


@pytest.mark.parametrize("url", ACCEPTED)
def test_accepted_at_save_time(url: str) -> None:
    assert refusal(url) is None


def test_the_allow_list_lets_its_networks_in_and_no_others() -> None:
    assert refusal("http://127.0.0.1:9/", LOOPBACK_ONE) is None
    assert refusal("http://localhost:9/", LOOPBACK_ONE) is None
    assert refusal("http://0x7f.1/", LOOPBACK_ONE) is None
    assert refusal("http://[::ffff:127.0.0.1]/", LOOPBACK_ONE) is None
    assert refusal("http://127.0.0.2/", LOOPBACK_ONE) == "127.0.0.2 is a loopback address"
    assert "loopback" in (refusal("http://[::1]/", LOOPBACK_ONE) or "")
    assert "link-local" in (refusal("http://169.254.169.254/", LOOPBACK_ONE) or "")
    # the allow list never lifts the checks that are not about addresses
    assert "scheme" in (refusal("gopher://127.0.0.1/", LOOPBACK_ONE) or "")
    assert "credentials" in (refusal("http://u:p@127.0.0.1/", LOOPBACK_ONE) or "")
    assert "localhost name" in (refusal("http://foo.localhost/", LOOPBACK_ONE) or "")


# --- send time ------------------------------------------------------------------------------


async def test_send_time_returns_the_checked_addresses() -> None:
    assert await checked_addresses("https://93.184.216.34/") == [ipaddress.ip_address("93.184.216.34")]
    assert await checked_addresses("http://localhost:9/", LOOPBACK_ONE) == [ipaddress.ip_address("127.0.0.1")]
    assert await checked_addresses("http://0x7f.1/", LOOPBACK_ONE) == [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.parametrize(("url", "allow", "why"), [
    ("http://127.0.0.2/", LOOPBACK_ONE, "127.0.0.2 is a loopback"),
    ("http://localhost:9/", (), "localhost resolves to 127.0.0.1, a loopback"),
    ("http://169.254.169.254/", LOOPBACK_ONE, "link-local"),
    ("file:///etc/passwd", (), "scheme 'file'"),
    ("http://user:pw@93.184.216.34/", (), "credentials"),
    ("http:///x", (), "no host"),
    ("http://[::1/", (), "not a valid URL"),
    ("https://hooks.invalid/x", (), "hooks.invalid does not resolve"),  # accepted at save time, refused now
    ("http://foo.localhost/", LOOPBACK_ONE, "foo.localhost does not resolve"),
])
async def test_send_time_refuses(url: str, allow: tuple[ipaddress.IPv4Network, ...], why: str) -> None:
    with pytest.raises(OutboundRefused) as refused:
        await checked_addresses(url, allow)
    assert why in str(refused.value)
    assert isinstance(refused.value, ValueError)


# --- the setting ----------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("STOREOPS_OUTBOUND"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_the_allow_list_is_read_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings().outbound.networks == ()
    clean_env.setenv("STOREOPS_OUTBOUND__ALLOW_NETWORKS", "127.0.0.1/32, 10.0.0.0/8,,::1")
    assert Settings().outbound.networks == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"),
                                            ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize(("value", "why"), [
    ("127.0.0.1/32,intranet", "'intranet' is not a network in CIDR notation"),
    ("10.0.0.1/8", "'10.0.0.1/8' is not a network in CIDR notation: 10.0.0.1/8 has host bits set"),
    ("127.0.0.1/33", "'127.0.0.1/33'"),
])
def test_a_bad_network_is_refused_naming_it(clean_env: pytest.MonkeyPatch, value: str, why: str) -> None:
    clean_env.setenv("STOREOPS_OUTBOUND__ALLOW_NETWORKS", value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "outbound.allow_networks" in str(refused.value) and why in str(refused.value)
    with pytest.raises(ValidationError, match="not a network in CIDR notation"):
        OutboundSettings(allow_networks=value)
