"""Where taolu's local servers (`taolu board`, `taolu serve`) listen: one interface, 127.0.0.1
unless another is named, and the first free port from the one asked for.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from typing import Any

from taolu.errors import ConfigError

# How many ports are tried, from the one asked for upwards.
PORT_ATTEMPTS = 100


def check_host_and_port(host: str, port: int, default_port: int) -> str:
    """The host as sockets take it ('[::1]' -> '::1'); refuses an empty host or a port out of
    range, naming the default."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ConfigError("--host is empty; use 127.0.0.1 (the default)")
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"--port {port} is out of range; use 1024 to 65535 (default {default_port})"
        )
    return host


def socket_address(host: str, port: int) -> tuple[socket.AddressFamily, Any]:
    """The family and socket address to bind for (host, port): IPv6 when the host has a
    colon, IPv4 otherwise (so "localhost" means 127.0.0.1, never also ::1)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise ConfigError(
            f"--host {host!r} is not an address of this machine ({error}); "
            "use 127.0.0.1 (the default) or one of its interface addresses"
        ) from error
    return family, infos[0][4]


def bind_error(host: str, port: int, error: OSError) -> ConfigError:
    """The user's words for a bind that failed for a reason other than a busy port."""
    if error.errno == errno.EACCES:
        return ConfigError(f"port {port} needs administrator rights; use --port 1024 or above")
    if error.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"--host {host!r} is not an address of this machine; use 127.0.0.1 "
            "(the default) or one of its interface addresses"
        )
    return ConfigError(f"cannot serve on {host} port {port}: {error.strerror or error}")


def _bound_socket(host: str, port: int) -> socket.socket | None:
    """A socket bound to (host, port) the way servers bind (SO_REUSEADDR), or None when the
    port is in use."""
    family, address = socket_address(host, port)
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP, and without it every small response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            return None
        raise bind_error(host, port, error) from error
    return sock


def port_is_free(host: str, port: int) -> bool:
    """Whether (host, port) can be bound now: binds a socket and closes it at once."""
    sock = _bound_socket(host, port)
    if sock is None:
        return False
    sock.close()
    return True


def no_free_port(host: str, first_port: int) -> ConfigError:
    last_port = min(first_port + PORT_ATTEMPTS - 1, 65535)
    return ConfigError(
        f"no free port from {first_port} to {last_port} on {host}; "
        "stop what uses them or pass another --port"
    )


def listen_on_first_free(host: str, first_port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket on `host` at `first_port` or the next free one after it (the socket
    is kept, so no other program can take the port between the check and the use)."""
    for port in range(first_port, min(first_port + PORT_ATTEMPTS - 1, 65535) + 1):
        sock = _bound_socket(host, port)
        if sock is None:
            continue
        try:
            sock.listen(backlog)
        except OSError as error:
            sock.close()
            if error.errno == errno.EADDRINUSE:
                continue
            raise bind_error(host, port, error) from error
        return sock
    raise no_free_port(host, first_port)


def listens_everywhere(address: str) -> bool:
    """Whether a bound address is the unspecified one (0.0.0.0, ::, or :: mapping 0.0.0.0),
    which listens on every interface. Decided by the parsed address, not by how the user
    spelt --host: "0", "0.0.0.0" and "::0" all bind the same."""
    try:
        parsed = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(parsed, "ipv4_mapped", None)
    return parsed.is_unspecified or (mapped is not None and mapped.is_unspecified)


def warn_unless_loopback(sock: socket.socket, what: str) -> None:
    """Say so on stderr when the server listens where other machines can reach it, naming
    the address it is bound to (however --host spelt it)."""
    host = sock.getsockname()[0]
    if ipaddress.ip_address(host.split("%")[0]).is_loopback:
        return
    reach = "every network this machine is on" if listens_everywhere(host) else "other machines"
    print(
        f"taolu: warning: --host {host} serves {what} to {reach} (the default, 127.0.0.1, "
        "serves this machine only)",
        file=sys.stderr,
    )


def url_of(sock: socket.socket) -> str:
    """http://HOST:PORT/ of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
