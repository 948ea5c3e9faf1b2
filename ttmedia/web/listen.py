"""The listening sockets of `ttmedia serve`, bound before anything else starts.

Binding first means "address in use" is the first and only thing said when another server
holds the port: no worker is started, no "serving on" line is printed.
"""

from __future__ import annotations

import errno
import socket


class ListenError(OSError):
    """The address cannot be listened on; the message says why and what to do."""


def url_of(host: str, port: int) -> str:
    """http://127.0.0.1:8000, http://[::1]:8000 (an IPv6 literal needs brackets in a URL)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def listen(host: str, port: int, backlog: int = 2048) -> list[socket.socket]:
    """Bind and listen on every address `host` resolves to, as asyncio's create_server does."""
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host!r}: {exc.strerror}; pass an IP address or a "
                          f"resolvable host name to --host") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            address = (address[0], port, *address[2:])
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                where = url_of(str(address[0]), port)
                if exc.errno == errno.EADDRINUSE:
                    raise ListenError(f"cannot listen on {where}: the address is already in use "
                                      "(another server runs there?); stop it or choose another --port") from None
                raise ListenError(f"cannot listen on {where}: {exc.strerror}") from None
            sock.listen(backlog)
            sock.setblocking(False)
            if port == 0:  # the other families of the host get the port the first one was given
                port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
