"""Network namespaces for chaos tests: real partitions between real processes on one machine.

A ``Network`` is a Linux bridge in the host's namespace plus one namespace per node, each joined
to the bridge by a veth pair and given an address in a /24 of its own (10.201.K.0/24; the
bridge, and so every process left in the host namespace, is 10.201.K.1). A process started with
``network.command(host, argv)`` lives in that namespace and can bind that address only.

Faults, each undone by ``heal``:

* ``cut(host)`` sets the host's veth down (nothing in or out: an isolated node);
* ``drop(host, peers, direction)`` drops traffic to and/or from some addresses with iptables in
  the host's namespace (a split between groups, one-way loss), ``probability`` below 1 for a
  lossy link (the ``statistic`` match);
* ``slow(host, ...)`` shapes the host's veth: ``netem`` delay where the kernel has it, else a
  token bucket (``tbf``) at a low rate.

A host's ``/etc/hosts`` can be set (``set_hosts_file``: a DNS name that resolves only there).
tests/netns_hosts.py gives the same network hosts by name, for tests across machines.

Rules: root only, with ``ip`` and, for the faults, ``iptables`` and ``tc``
(``unavailable_reason()`` says why not, for a clear skip). Every name carries this process's id
(``afc<pid>``), so runs never collide and the leftovers of a killed run are found and removed
by the next one (``remove_stale``); one Network at a time per process. ``close()`` removes
every namespace, veth, hosts file and the bridge this object made, and is safe to call twice;
the caller stops the processes inside first (a namespace lives as long as a process in it).
Only addresses inside these namespaces are ever targets.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PREFIX = "afc"
_NAME = re.compile(rf"^{PREFIX}(\d+)")
NETNS_ETC = Path("/etc/netns")  # `ip netns exec NS` mounts NETNS_ETC/NS/hosts over /etc/hosts
PACKAGES = {"ip": "iproute2", "iptables": "iptables", "tc": "iproute2"}


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result


def unavailable_reason(tools: tuple[str, ...] = tuple(PACKAGES)) -> str | None:
    """Why network namespaces (with ``tools``) cannot be used here, or None when they can."""
    if os.name != "posix" or os.geteuid() != 0:
        return "network namespaces need root"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (apt-get install {PACKAGES[tool]})"
    probe = f"{PREFIX}{os.getpid()}probe"
    made = _run(["ip", "netns", "add", probe], check=False)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    _run(["ip", "netns", "del", probe], check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Remove namespaces and links left by runs whose process is gone (a kill -9 of pytest)."""
    namespaces = _run(["ip", "netns", "list"], check=False).stdout.split()
    links = re.findall(r"^\d+: ([^:@]+)", _run(["ip", "-o", "link"], check=False).stdout, re.M)
    hosts_files = [path.name for path in NETNS_ETC.iterdir()] if NETNS_ETC.is_dir() else []
    for name in [*namespaces, *links, *hosts_files]:
        match = _NAME.match(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            if name in namespaces:
                _run(["ip", "netns", "del", name], check=False)
            if name in links:
                _run(["ip", "link", "del", name], check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def has_netem() -> bool:
    """Whether this kernel has the netem qdisc (many container kernels do not)."""
    name = f"{PREFIX}{os.getpid()}nt"
    _run(["ip", "link", "add", name, "type", "dummy"], check=False)
    try:
        return _run(["tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms"], check=False).returncode == 0
    finally:
        _run(["ip", "link", "del", name], check=False)


def _free_subnet() -> int:
    """A K whose 10.201.K.0/24 no bridge here has yet (other runs', other engineers'), from one
    the pid picks."""
    used = {int(k) for k in re.findall(r"inet 10\.201\.(\d+)\.", _run(["ip", "-o", "-4", "addr"], check=False).stdout)}
    start = os.getpid() % 200 + 20
    return next(k for k in [*range(start, 250), *range(20, start)] if k not in used)


@dataclass
class Host:
    name: str
    namespace: str
    veth: str  # the host-side end, on the bridge
    address: str


class Network:
    def __init__(self, subnet: int | None = None) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.subnet = _free_subnet() if subnet is None else subnet
        self.bridge = f"{self.tag}br"
        self.gateway = f"10.201.{self.subnet}.1"
        self.hosts: dict[str, Host] = {}
        self._netem: bool | None = None
        remove_stale()
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_host(self, name: str) -> Host:
        host = Host(name, f"{self.tag}{name}", f"{self.tag}{name}", f"10.201.{self.subnet}.{10 + len(self.hosts)}")
        self.hosts[name] = host
        _run(["ip", "netns", "add", host.namespace])
        _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.namespace])
        _run(["ip", "link", "set", host.veth, "master", self.bridge, "up"])
        inside = ["ip", "netns", "exec", host.namespace]
        _run([*inside, "ip", "addr", "add", f"{host.address}/24", "dev", "eth0"])
        _run([*inside, "ip", "link", "set", "eth0", "up"])
        _run([*inside, "ip", "link", "set", "lo", "up"])
        return host

    def command(self, host: Host) -> list[str]:
        """The prefix that runs a command inside ``host``'s namespace (``ip netns exec`` execs it,
        so the pid is the command's own: kill -9 and SIGSTOP reach it directly)."""
        return ["ip", "netns", "exec", host.namespace]

    def set_hosts_file(self, host: Host, entries: dict[str, str]) -> None:
        """``host``'s /etc/hosts: ``{name: address}`` besides localhost. Rewritten in place, so a
        process already running there sees the change."""
        directory = NETNS_ETC / host.namespace
        directory.mkdir(parents=True, exist_ok=True)
        text = "127.0.0.1 localhost\n" + "".join(f"{address} {name}\n" for name, address in entries.items())
        with open(directory / "hosts", "w") as handle:
            handle.write(text)

    # ------------------------------------------------------------------ faults

    def cut(self, host: Host) -> None:
        _run(["ip", "link", "set", host.veth, "down"])

    def drop(self, host: Host, peers: list[str], direction: str = "both", probability: float = 1.0) -> None:
        """Drop packets between ``host`` and ``peers`` (addresses): ``out`` (host -> peers), ``in``
        (peers -> host) or ``both``; with ``probability`` < 1, each packet independently."""
        chance = [] if probability >= 1 else ["-m", "statistic", "--mode", "random",
                                               "--probability", f"{probability:.3f}"]
        rules = []
        for peer in peers:
            if direction in ("out", "both"):
                rules.append(["OUTPUT", "-d", peer])
            if direction in ("in", "both"):
                rules.append(["INPUT", "-s", peer])
        for chain, flag, peer in rules:
            _run([*self.command(host), "iptables", "-w", "-A", chain, flag, peer, *chance, "-j", "DROP"])

    def slow(self, host: Host, delay_ms: int = 200, rate_kbit: int = 64) -> str:
        """Slow ``host``'s link down both ways; returns what was used ("netem" or "tbf")."""
        if self._netem is None:
            self._netem = has_netem()
        for device, where in ((host.veth, []), ("eth0", self.command(host))):
            if self._netem:
                _run([*where, "tc", "qdisc", "add", "dev", device, "root", "netem", "delay", f"{delay_ms}ms",
                      "rate", f"{rate_kbit}kbit"])
            else:
                _run([*where, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", f"{rate_kbit}kbit",
                      "burst", "4kb", "latency", f"{max(delay_ms, 50) * 10}ms"])
        return "netem" if self._netem else "tbf"

    def heal(self, host: Host | None = None) -> None:
        """Undo every fault on ``host`` (or on all hosts)."""
        for each in [host] if host is not None else list(self.hosts.values()):
            _run(["ip", "link", "set", each.veth, "up"], check=False)
            _run([*self.command(each), "iptables", "-w", "-F"], check=False)
            _run(["tc", "qdisc", "del", "dev", each.veth, "root"], check=False)
            _run([*self.command(each), "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        for host in list(self.hosts.values()):
            _run(["ip", "link", "del", host.veth], check=False)
            _run(["ip", "netns", "del", host.namespace], check=False)
            shutil.rmtree(NETNS_ETC / host.namespace, ignore_errors=True)
        self.hosts.clear()
        _run(["ip", "link", "del", self.bridge], check=False)

    def leftovers(self) -> list[str]:
        """Namespaces and links of this object still present (empty after ``close``)."""
        namespaces = _run(["ip", "netns", "list"], check=False).stdout.split()
        links = re.findall(r"^\d+: ([^:@]+)", _run(["ip", "-o", "link"], check=False).stdout, re.M)
        return [name for name in [*namespaces, *links]
                if (match := _NAME.match(name)) and int(match.group(1)) == os.getpid()]
