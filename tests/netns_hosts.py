"""Hosts of a test network on this machine: one network namespace per host, each joined to a
bridge in the root namespace by a veth pair, so that processes bound to a host's own address
talk to each other over a real (virtual) network, and a host can be cut off and healed.

    with NetnsHosts("afd", "10.34.0", ["m1", "m2"]) as hosts:   # m1 is 10.34.0.11, m2 .12
        hosts.command("m1") + ["python", ...]    # argv that runs inside m1's namespace
        hosts.set_hosts_file("m2", {"m1.test": "10.34.0.11"})   # m2's /etc/hosts
        hosts.cut("m1"); hosts.heal("m1")

Rules: root only (``unavailable()`` says why not, for a skip); every namespace, link and
/etc/netns file this creates it removes on exit, even after a failure; the only addresses are
the subnet given, which exists only inside these namespaces and on the bridge (the root
namespace gets .1, so a test process there reaches every host).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

NETNS_ETC = Path("/etc/netns")


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def unavailable() -> str | None:
    """Why these hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"afprobe{os.getpid()}"
    try:
        run("ip", "netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        return f"ip netns add fails here: {detail}"
    run("ip", "netns", "del", probe)
    return None


class NetnsHosts:
    def __init__(self, prefix: str, subnet: str, names: list[str], first_host: int = 11) -> None:
        self.prefix = prefix  # keeps these names apart from other tests' (at most 6 characters)
        self.subnet = subnet  # the first three octets of a /24
        self.bridge = f"{prefix}-br"
        self.root_address = f"{subnet}.1"  # the root namespace's address on the bridge
        self.addresses = {name: f"{subnet}.{first_host + i}" for i, name in enumerate(names)}
        self._made: list[tuple[str, ...]] = []  # undo commands, run in reverse

    def namespace(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _link(self, name: str) -> str:
        return f"{self.prefix}-{name}"[:15]  # the root side of the host's veth pair

    def __enter__(self) -> NetnsHosts:
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _make(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        self._made.append(("ip", "link", "del", self.bridge))
        run("ip", "addr", "add", f"{self.root_address}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for name, address in self.addresses.items():
            namespace, link = self.namespace(name), self._link(name)
            run("ip", "netns", "add", namespace)
            self._made.append(("ip", "netns", "del", namespace))
            run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            self._made.append(("ip", "link", "del", link))
            run("ip", "link", "set", link, "master", self.bridge, "up")
            inside = ("ip", "netns", "exec", namespace)
            run(*inside, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            run(*inside, "ip", "link", "set", "eth0", "up")
            run(*inside, "ip", "link", "set", "lo", "up")

    def command(self, name: str) -> list[str]:
        """The argv prefix that runs a command inside host ``name``."""
        return ["ip", "netns", "exec", self.namespace(name)]

    def set_hosts_file(self, name: str, entries: dict[str, str]) -> None:
        """Host ``name``'s /etc/hosts (``ip netns exec`` mounts /etc/netns/NS/hosts over it). The
        file is rewritten in place, so a process already running there sees the change."""
        directory = NETNS_ETC / self.namespace(name)
        if not directory.exists():
            directory.mkdir(parents=True)
            self._made.append(("rm", "-rf", str(directory)))
        text = "127.0.0.1 localhost\n" + "".join(f"{address} {host}\n" for host, address in entries.items())
        with open(directory / "hosts", "w") as handle:
            handle.write(text)

    def cut(self, name: str) -> None:
        """Cut host ``name`` off from every other host and from the root namespace."""
        run("ip", "link", "set", self._link(name), "down")

    def heal(self, name: str) -> None:
        run("ip", "link", "set", self._link(name), "up")

    def close(self) -> None:
        while self._made:
            undo = self._made.pop()
            subprocess.run(undo, capture_output=True, timeout=30)  # best effort: the rest still goes
