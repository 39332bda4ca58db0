"""Hosts of a test network on this machine, by name: tests/netns.py's ``Network`` (a bridge in
the root namespace, one network namespace per host joined to it by a veth pair), so that
processes bound to a host's own address talk to each other over a real (virtual) network, and
a host can be cut off and healed.

    with NetnsHosts(["m1", "m2"]) as hosts:
        hosts.addresses["m1"]                     # its address on the bridge
        hosts.command("m1") + ["python", ...]     # argv that runs inside m1's namespace
        hosts.set_hosts_file("m2", {"m1.test": hosts.addresses["m1"]})   # m2's /etc/hosts
        hosts.cut("m1"); hosts.heal("m1")

Rules: tests/netns.py's (root only, names that carry this process's id, everything removed on
exit, even after a failure); ``unavailable()`` says why not, for a skip. The root namespace has
the bridge's address (``root_address``), so a test process there reaches every host.
"""

from __future__ import annotations

from tests import netns


def unavailable() -> str | None:
    """Why these hosts cannot be made here, or None (iproute2 is enough: no faults but cuts)."""
    return netns.unavailable_reason(tools=("ip", "tc"))


class NetnsHosts:
    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.network: netns.Network | None = None
        self.hosts: dict[str, netns.Host] = {}

    def __enter__(self) -> NetnsHosts:
        self.network = netns.Network()
        try:
            self.hosts = {name: self.network.add_host(name) for name in self.names}
        except BaseException:
            self.network.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.network.close()

    @property
    def addresses(self) -> dict[str, str]:
        return {name: host.address for name, host in self.hosts.items()}

    @property
    def root_address(self) -> str:
        return self.network.gateway

    def command(self, name: str) -> list[str]:
        """The argv prefix that runs a command inside host ``name``."""
        return self.network.command(self.hosts[name])

    def set_hosts_file(self, name: str, entries: dict[str, str]) -> None:
        self.network.set_hosts_file(self.hosts[name], entries)

    def cut(self, name: str) -> None:
        """Cut host ``name`` off from every other host and from the root namespace."""
        self.network.cut(self.hosts[name])

    def heal(self, name: str) -> None:
        self.network.heal(self.hosts[name])
