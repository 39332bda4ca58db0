"""Addresses for real networks: where a node binds, and the address it tells others to use.

    advertise = parse_advertise("m1.agentflow.svc:6767")    # ("m1.agentflow.svc", 6767)
    host, port = advertised_address("0.0.0.0", advertise)   # what goes in every frame it sends
    Node(node_id, host="0.0.0.0", port=6767, advertise_host=host, advertise_port=port)

Role: one rule for masters, workers and agent hosts. ``--host`` is where a node binds;
``--advertise HOST[:PORT]`` is what its peers are told (a pod's DNS name, a NAT's public
address; PORT only when a port mapping changes it). A node bound to a wildcard address and
given no ``--advertise`` advertises the address its own host name resolves to.

Names are resolved late: a peer's DNS name (a StatefulSet pod that is not scheduled yet) may
not resolve at start-up; ``unresolved`` says which do not yet, so a caller waits and retries
instead of failing, and ZeroMQ resolves the name again on every reconnect, so a peer that comes
back with a new IP under the same name is found again.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Callable

WILDCARD_HOSTS = ("0.0.0.0", "*", "::", "")


def parse_advertise(text: str | None) -> tuple[str, int | None] | None:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or ``tcp://HOST:PORT`` as (host, port or None);
    None for no text. Raises ValueError naming the problem."""
    if not text:
        return None
    rest = text.strip()
    if rest.lower().startswith("tcp://"):
        rest = rest[len("tcp://"):]
    port_text = ""
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail and not tail.startswith(":"):
            raise ValueError(f"--advertise {text!r}: expected HOST[:PORT]")
        port_text = tail[1:]
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host = rest  # a bare name, IPv4 address or unbracketed IPv6 address
    if not host or "/" in host or host in WILDCARD_HOSTS:
        raise ValueError(f"--advertise {text!r}: expected the HOST[:PORT] others should use, not a wildcard")
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"--advertise {text!r}: the port must be 1-65535")
    return host, int(port_text) if port_text else None


def default_advertise_host(hostname: Callable[[], str] = socket.gethostname) -> str:
    """What a wildcard-bound node advertises without ``--advertise``: the address its host name
    resolves to (a container's or a pod's own IP from /etc/hosts), else the name itself."""
    name = hostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        return name
    return name if ipaddress.ip_address(address).is_loopback else address


def advertised_address(bind_host: str, advertise: tuple[str, int | None] | None) -> tuple[str | None, int | None]:
    """(host, port) to advertise, None meaning "as bound": ``advertise`` when given, the
    default for a wildcard bind, else the bound host itself."""
    if advertise is not None:
        return advertise
    if bind_host in WILDCARD_HOSTS:
        return default_advertise_host(), None
    return None, None


def endpoint_host(endpoint: str) -> str:
    """The host part of ``tcp://HOST:PORT`` (brackets of an IPv6 address removed)."""
    rest = endpoint.split("://", 1)[-1]
    host = rest.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


def unresolved(endpoints: list[str], resolve: Callable[..., object] = socket.getaddrinfo) -> list[str]:
    """The endpoints whose host name does not resolve (yet)."""
    missing = []
    for endpoint in endpoints:
        try:
            resolve(endpoint_host(endpoint), None)
        except (OSError, UnicodeError):
            missing.append(endpoint)
    return missing
