"""Outbound requests (webhooks) that cannot reach inside the installation (SSRF).

A URL someone saved is checked twice. At save time, ``refusal`` tells them why it is
refused: a scheme other than http/https, credentials in the URL, or a host that is or
resolves to a loopback, link-local (the cloud metadata service at 169.254.169.254),
private, shared (100.64.0.0/10), unspecified, multicast, reserved or otherwise not
globally reachable address. At send time, ``send`` resolves the name again, checks every
address and connects to a checked one, for every redirect hop too.

DNS rebinding: a name's owner decides what it resolves to and for how long, so it can
answer a public address to the check and ``127.0.0.1`` a second later to the HTTP client's
own lookup. Checking a name and then letting the client resolve it again checks nothing;
``send`` therefore pins the connection to the address it checked (the URL carries the IP,
the ``Host`` header and, for https, the TLS server name and certificate check keep the
name). Networks in ``allow`` (``STOREOPS_OUTBOUND__ALLOW_NETWORKS``) are accepted
although internal, e.g. a receiver on this machine in development.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any, TypeAlias

import httpx

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

RESOLVE_TIMEOUT_SECONDS = 3.0
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; ipaddress calls it neither private nor global
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.0.0.0 to this machine
_PRIVATE = tuple(map(ipaddress.ip_network, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")))
_METADATA = ipaddress.ip_address("169.254.169.254")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
_BODY = ("content", "data", "files", "json")


class OutboundRefused(ValueError):
    """The URL, or a redirect it leads to, may not be requested; the message says why."""


def refusal(url: str, allow: Sequence[Network] = ()) -> str | None:
    """Why ``url`` may not be saved as a webhook, or None.

    Names are resolved now (blocking, at most ``RESOLVE_TIMEOUT_SECONDS``; from async code
    use ``asyncio.to_thread``): refused if any address is. A name that does not resolve is
    accepted, except a ``localhost`` one: it may resolve later and is checked again at send
    time.
    """
    try:
        host, port, literal = _parse(url)
    except OutboundRefused as exc:
        return str(exc)
    if literal is not None:
        return _address_refusal(literal, allow)
    resolved: list[list[Address]] = []
    thread = threading.Thread(target=lambda: resolved.append(_resolve(host, port)), daemon=True)
    thread.start()
    thread.join(RESOLVE_TIMEOUT_SECONDS)
    if not resolved or not resolved[0]:
        return f"{host} is a localhost name: this machine, a loopback address" if _is_localhost(host) else None
    return next(filter(None, (_address_refusal(a, allow, host) for a in resolved[0])), None)


async def checked_addresses(url: str, allow: Sequence[Network] = ()) -> list[Address]:
    """The addresses ``url``'s host resolves to now, every one checked; raises ``OutboundRefused``."""
    host, port, literal = _parse(url)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), RESOLVE_TIMEOUT_SECONDS)
        except (OSError, UnicodeError, TimeoutError) as exc:
            raise OutboundRefused(f"{host} does not resolve: {str(exc) or 'timed out'}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        if not addresses:
            raise OutboundRefused(f"{host} does not resolve")
    for address in addresses:
        if reason := _address_refusal(address, allow, None if literal else host):
            raise OutboundRefused(reason)
    return addresses


async def send(client: httpx.AsyncClient, method: str, url: str, allow: Sequence[Network] = (),
               max_redirects: int = 5, **kwargs: Any) -> httpx.Response:
    """``client.request(method, url, **kwargs)`` connected to checked addresses only.

    Each hop is resolved and checked (``checked_addresses``) and the connection pinned to a
    checked address, tried in the resolver's order if one does not connect. Redirects are
    followed here, never by the client: 302 and 303 (301 after a POST) become a GET without
    the body as in httpx, ``Authorization`` and ``auth`` are dropped when the origin changes, more than
    ``max_redirects`` raise ``OutboundRefused``. The response's ``history`` holds the
    redirects; its ``request.url`` carries the address connected to. An https request asks
    for ``Connection: close``: the pool knows a connection by IP, and one made for another
    name's certificate must not be reused (HTTP/2 clients are not supported).
    """
    method, target = method.upper(), httpx.URL(url)
    if params := kwargs.pop("params", None):
        target = target.copy_merge_params(params)
    headers = httpx.Headers(kwargs.pop("headers", None))
    history: list[httpx.Response] = []
    for _ in range(max_redirects + 1):
        addresses = await checked_addresses(str(target), allow)
        response = await _pinned(client, method, target, addresses, headers, kwargs)
        if not response.has_redirect_location:
            response.history = history
            return response
        history.append(response)
        following = target.join(response.headers["location"])  # httpx raised already if it is not a URL
        if _origin(following) != _origin(target):
            headers = headers.copy()
            headers.pop("authorization", None)
            kwargs.pop("auth", None)
        if (response.status_code in (302, 303) and method != "HEAD") or (response.status_code == 301 and method == "POST"):
            method, kwargs = "GET", {k: v for k, v in kwargs.items() if k not in _BODY}
        target = following
    raise OutboundRefused(f"more than {max_redirects} redirects, the last to {target}")


async def _pinned(client: httpx.AsyncClient, method: str, url: httpx.URL, addresses: list[Address],
                  headers: httpx.Headers, kwargs: dict[str, Any]) -> httpx.Response:
    host = url.raw_host.decode("ascii")
    hop = headers.copy()
    hop["Host"] = url.netloc.decode("ascii")
    if url.scheme == "https":
        hop["Connection"] = "close"
    extensions = {**kwargs.get("extensions", {}), "sni_hostname": host}
    rest = {k: v for k, v in kwargs.items() if k != "extensions"}

    async def to(address: Address) -> httpx.Response:
        return await client.request(method, url.copy_with(host=str(address)), headers=hop, extensions=extensions,
                                    follow_redirects=False, **rest)

    for address in addresses[:-1]:
        try:
            return await to(address)
        except httpx.ConnectError:
            continue
    return await to(addresses[-1])


def _parse(url: str) -> tuple[str, int, Address | None]:
    """(host for the resolver, port, the address if the host is a literal); the static checks."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:  # 0177.0.0.1 among them: say what it is if it is one
        try:
            literal = _literal(urllib.parse.urlsplit(url).hostname or "")
        except ValueError:
            literal = None
        reason = literal and _address_refusal(literal)
        raise OutboundRefused(f"not a valid URL ({exc})" + (f"; and {reason}" if reason else "")) from None
    if parsed.scheme not in ("http", "https"):
        raise OutboundRefused(f"scheme {parsed.scheme or '(none)'!r} is not allowed: http or https only")
    if not parsed.raw_host:
        raise OutboundRefused("the URL has no host")
    if parsed.userinfo:
        raise OutboundRefused("credentials in the URL (user:password@) are not allowed")
    host = parsed.raw_host.decode("ascii")
    return host, parsed.port or (443 if parsed.scheme == "https" else 80), _literal(host)


def _literal(host: str) -> Address | None:
    """The address a host spells, as ``inet_aton`` reads IPv4: 127.1, 2130706433, 0x7f.1, 0177.0.0.1."""
    host = urllib.parse.unquote(host).rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER.fullmatch(p) for p in parts):
        return None
    numbers = [int(p, 16) if p[:2].lower() == "0x" else int(p, 8) if p.startswith("0") else int(p) for p in parts]
    *heads, last = numbers
    if any(n > 255 for n in heads) or last >= 256 ** (5 - len(parts)):
        return None
    return ipaddress.IPv4Address(sum(n << 8 * (3 - i) for i, n in enumerate(heads)) + last)


def _address_refusal(address: Address, allow: Sequence[Network] = (), host: str | None = None) -> str | None:
    """Why connecting to ``address`` is refused, or None if it is global or allowed."""
    embedded = address.ipv4_mapped or address.sixtofour if isinstance(address, ipaddress.IPv6Address) else None
    candidates = (address,) if embedded is None else (address, embedded)
    if any(a in network for a in candidates for network in allow if a.version == network.version):
        return None
    if embedded is not None:  # ::ffff:127.0.0.1 and 2002:7f00:1:: reach 127.0.0.1: the IPv4 address decides
        kind = _kind(embedded)
        kind = kind and f"{kind} (it embeds {embedded})"
    else:
        kind = _kind(address)
    if not kind:
        return None
    return f"{host} resolves to {address}, {kind}" if host else f"{address} is {kind}"


def _kind(address: Address) -> str | None:
    if address.is_unspecified or address in _THIS_NETWORK:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address" + (": the cloud metadata service" if address == _METADATA else "")
    if address.is_multicast:
        return "a multicast address"
    if address in _SHARED:
        return "in the shared address space 100.64.0.0/10"
    if address.is_reserved:
        return "a reserved address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if any(address in network for network in _PRIVATE if network.version == address.version):
        return "a private address"
    return None if address.is_global else "not a globally reachable address"


def _resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def _is_localhost(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def _origin(url: httpx.URL) -> tuple[str, bytes, int | None]:
    return url.scheme, url.raw_host, url.port
