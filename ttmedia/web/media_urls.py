"""Image inputs given as http(s) URLs: fetched only from listed hosts, bounded, and never from an
address inside the server's networks (SSRF).

* Off by default: a URL is fetched only when `MEDIA_URL_ALLOWED_DOMAINS` lists its host
  (`example.com` that host only, `*.example.com` its subdomains).
* Bounds: `MEDIA_URL_MAX_BYTES` (413 above, checked against Content-Length and while reading),
  `MEDIA_URL_TIMEOUT_SECONDS` for the whole fetch, redirects included, and
  `MEDIA_URL_MAX_REDIRECTS`.
* Addresses: every address a host resolves to must be public: loopback, private, link-local,
  shared, multicast, reserved and unspecified addresses are refused unless
  `MEDIA_URL_ALLOWED_NETWORKS` lists their network. The check runs in the connection itself,
  on the addresses it then connects to (so a DNS answer that changes between a check and the
  connection, DNS rebinding, cannot slip through), for the first request and after every
  redirect; a redirect's host must be listed too. Proxies from the environment are not used.

Errors: 400 `media_url_refused` (not allowed: feature off, host not listed, an internal address,
a scheme other than http/https), 400 `media_url_failed` (timeout, connection failure, an HTTP
error status, too many redirects), 413 `payload_too_large`; bytes that are not an image are the
caller's 422.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from ttmedia.web import problems
from ttmedia.settings import Settings

REDIRECTS = {301, 302, 303, 307, 308}
USER_AGENT = b"ttmedia-media-fetch/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class MediaURLRefused(problems.Problem):
    status, reason = 400, "media_url_refused"


class MediaURLFailed(problems.Problem):
    status, reason = 400, "media_url_failed"


def is_media_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class Policy:
    domains: tuple[str, ...]
    networks: tuple[IPNetwork, ...]
    max_bytes: int
    timeout_s: float
    max_redirects: int

    @classmethod
    def from_settings(cls, s: Settings) -> Policy:
        domains = tuple(d.strip().lower().rstrip(".") for d in s.media_url_allowed_domains.split(",") if d.strip())
        networks = tuple(ipaddress.ip_network(n.strip(), strict=False)
                         for n in s.media_url_allowed_networks.split(",") if n.strip())
        return cls(domains, networks, s.media_url_max_bytes, s.media_url_timeout_seconds, s.media_url_max_redirects)

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for domain in self.domains:
            if domain.startswith("*."):
                if host.endswith(domain[1:]) and host != domain[2:]:
                    return True
            elif host == domain:
                return True
        return False

    def address_allowed(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if any(address in network for network in self.networks):
            return True
        return address.is_global and not address.is_multicast


def _check_url(policy: Policy, url: str, field: str) -> None:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise MediaURLRefused(f"'{field}': only http and https URLs are fetched, not {parts.scheme or 'this'}.")
    host = parts.hostname or ""
    if not policy.domains:
        raise MediaURLRefused(f"'{field}': this server does not fetch media URLs (MEDIA_URL_ALLOWED_DOMAINS is "
                              "empty); send the image as base64 or a data URI.")
    if not host or not policy.host_allowed(host):
        raise MediaURLRefused(f"'{field}': host {host!r} is not in MEDIA_URL_ALLOWED_DOMAINS.")
    if parts.username or parts.password:
        raise MediaURLRefused(f"'{field}': URLs with credentials are not fetched.")


class _GuardedBackend:
    """httpcore's network backend, checking every address before it connects to it."""

    def __init__(self, policy: Policy, field: str) -> None:
        import httpcore

        self.inner = httpcore.AnyIOBackend()
        self.policy = policy
        self.field = field

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> Any:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise MediaURLFailed(f"'{self.field}': host {host!r} does not resolve: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for text in addresses:
            if not self.policy.address_allowed(ipaddress.ip_address(text.split("%", 1)[0])):
                raise MediaURLRefused(f"'{self.field}': host {host!r} resolves to {text}, an internal address "
                                      "(loopback, private or link-local); it is not fetched.")
        last: BaseException | None = None
        for text in addresses:  # connect to exactly the addresses checked above
            try:
                return await self.inner.connect_tcp(text, port, timeout, local_address, socket_options)
            except Exception as exc:  # noqa: BLE001 - try the next address, report the last failure
                last = exc
        raise MediaURLFailed(f"'{self.field}': cannot connect to {host}:{port}: {last}")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> Any:
        raise MediaURLRefused(f"'{self.field}': unix sockets are not fetched.")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


async def fetch(settings: Settings, url: str, field: str) -> bytes:
    """The bytes at `url`, within the policy of `settings` (see the module docstring)."""
    policy = Policy.from_settings(settings)
    _check_url(policy, url, field)
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _fetch(policy, url, field)
    except TimeoutError:
        raise MediaURLFailed(f"'{field}': fetching {url} took longer than {policy.timeout_s:g} s.") from None


async def _fetch(policy: Policy, url: str, field: str) -> bytes:
    import httpcore

    headers = [(b"User-Agent", USER_AGENT), (b"Accept", b"image/*")]
    backend: Any = _GuardedBackend(policy, field)  # duck-typed: the methods httpcore calls on a backend
    async with httpcore.AsyncConnectionPool(network_backend=backend, retries=0) as pool:
        for _hop in range(policy.max_redirects + 1):
            _check_url(policy, url, field)
            try:
                async with pool.stream("GET", url, headers=headers) as response:
                    if response.status in REDIRECTS:
                        location = _header(response.headers, b"location")
                        if not location:
                            raise MediaURLFailed(f"'{field}': {url} redirected without a Location.")
                        url = urljoin(url, location)
                        continue
                    if not 200 <= response.status < 300:
                        raise MediaURLFailed(f"'{field}': {url} answered HTTP {response.status}.")
                    return await _read(response, policy.max_bytes, url, field)
            except httpcore.UnsupportedProtocol as exc:
                raise MediaURLRefused(f"'{field}': {exc}") from None
            except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException) as exc:
                raise MediaURLFailed(f"'{field}': fetching {url} failed: {exc or type(exc).__name__}") from None
    raise MediaURLFailed(f"'{field}': more than {policy.max_redirects} redirects (MEDIA_URL_MAX_REDIRECTS).")


async def _read(response: Any, limit: int, url: str, field: str) -> bytes:
    declared = _header(response.headers, b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise problems.PayloadTooLarge(f"'{field}': {url} is {declared} bytes; MEDIA_URL_MAX_BYTES is {limit}.")
    body = bytearray()
    async for chunk in response.aiter_stream():
        body += chunk
        if len(body) > limit:
            raise problems.PayloadTooLarge(f"'{field}': {url} is over MEDIA_URL_MAX_BYTES ({limit} bytes).")
    return bytes(body)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None
