"""The fault schedule: what a seed does to the cluster, and the hands that do it.

``schedule(kind, seed)`` is pure: the same kind and seed give the same ``Fault`` (its targets
by role, its timings, its parameters), whatever the cluster does. ``inject`` carries one out on
a running ``Target`` (a cluster, plus a ``tests.netns.Network`` for the network kinds) and
returns a ``heal`` callable; ``heal`` undoes it (restarts what was killed, resumes what was
paused, lifts the partition) and is safe to call twice. The caller holds a fault for
``hold_s`` before healing it: a fault's length is part of the schedule, not a wait for a
condition.

Process faults run on 127.0.0.1 or in namespaces alike; network faults need namespaces.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from dataclasses import dataclass, field
from typing import Callable

from tests.netns import Host, Network

PROCESS_KINDS = ("kill_leader", "kill_follower", "kill_worker", "pause_leader", "pause_worker")
NETWORK_KINDS = ("isolate_leader", "split_minority_leader", "one_way_loss", "flapping", "slow_link")
KINDS = PROCESS_KINDS + NETWORK_KINDS
LEADER_KINDS = ("kill_leader", "kill_follower", "pause_leader", "isolate_leader", "split_minority_leader",
                "one_way_loss")  # the faults aimed at the leader (or away from it)

ELECTION_TIMEOUT_MS = (600, 1200)  # what the chaos masters run with
WORKER_DEAD_AFTER_S = 3.0  # a worker that misses 3 heartbeats of 1 s is offline


@dataclass
class Fault:
    kind: str
    seed: int
    lead_in_s: float  # workload alone before the fault
    hold_s: float  # how long the fault lasts
    params: dict = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.kind} seed {self.seed}: after {self.lead_in_s:.2f} s for {self.hold_s:.2f} s {self.params}"


def schedule(kind: str, seed: int) -> Fault:
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r} (one of {', '.join(KINDS)})")
    rng = random.Random(f"{kind}/{seed}")
    lead_in_s = rng.uniform(0.2, 1.0)
    election_max_s = ELECTION_TIMEOUT_MS[1] / 1000
    if kind in ("kill_leader", "kill_follower"):
        return Fault(kind, seed, lead_in_s, rng.uniform(0.1, 2.5), {"pick": rng.random()})
    if kind == "kill_worker":
        return Fault(kind, seed, lead_in_s, rng.uniform(0.1, 4.0), {"pick": rng.random()})
    if kind == "pause_leader":
        return Fault(kind, seed, lead_in_s, rng.uniform(1.5, 3.0) * election_max_s, {})
    if kind == "pause_worker":
        return Fault(kind, seed, lead_in_s, rng.uniform(WORKER_DEAD_AFTER_S + 0.5, WORKER_DEAD_AFTER_S + 2.5),
                     {"pick": rng.random()})
    if kind == "isolate_leader":
        return Fault(kind, seed, lead_in_s, rng.uniform(1.5, 3.0) * election_max_s, {})
    if kind == "split_minority_leader":
        return Fault(kind, seed, lead_in_s, rng.uniform(1.5, 3.0) * election_max_s, {"pick": rng.random()})
    if kind == "one_way_loss":
        return Fault(kind, seed, lead_in_s, rng.uniform(1.5, 3.0) * election_max_s,
                     {"direction": rng.choice(("out", "in")), "probability": rng.choice((1.0, 0.9, 0.6))})
    if kind == "flapping":
        return Fault(kind, seed, lead_in_s, rng.uniform(2.0, 4.0),
                     {"periods_s": [round(rng.uniform(0.05, 0.8), 3) for _ in range(40)], "pick": rng.random()})
    return Fault(kind, seed, lead_in_s, rng.uniform(2.0, 4.0),
                 {"rate_kbit": rng.choice((32, 64, 256)), "delay_ms": rng.choice((50, 200, 500)),
                  "loss": rng.choice((0.0, 0.1, 0.3)), "pick": rng.random()})


class Target:
    """What faults act on: the cluster's processes, a way to name the leader, and the network."""

    def __init__(self, cluster, leader_of: Callable[[], str], network: Network | None = None,
                 hosts: dict[str, Host] | None = None) -> None:
        self.cluster, self.leader_of, self.network, self.hosts = cluster, leader_of, network, hosts or {}


def _pick(items: list, fraction: float):
    return items[min(int(fraction * len(items)), len(items) - 1)]


def _signal(child, signum: int) -> None:
    if child.alive():
        os.kill(child.proc.pid, signum)


def resume(child) -> None:
    """SIGCONT, for the way out: a paused process cannot act on SIGTERM."""
    _signal(child, signal.SIGCONT)


def inject(fault: Fault, target: Target) -> Callable[[], None]:
    """Start ``fault``; returns its ``heal``."""
    kind, cluster = fault.kind, target.cluster
    if kind in NETWORK_KINDS and target.network is None:
        raise RuntimeError(f"{kind} needs network namespaces")
    if kind in LEADER_KINDS:
        leader = cluster.by_id(target.leader_of())
    if kind in ("kill_leader", "kill_follower", "kill_worker"):
        if kind == "kill_leader":
            victim = leader
        elif kind == "kill_follower":
            victim = _pick([m for m in cluster.masters if m is not leader], fault.params["pick"])
        else:
            victim = _pick(cluster.workers, fault.params["pick"])
        victim.kill()
        return _once(lambda: victim.alive() or victim.start())
    if kind in ("pause_leader", "pause_worker"):
        victim = leader if kind == "pause_leader" else _pick(cluster.workers, fault.params["pick"])
        _signal(victim, signal.SIGSTOP)
        return _once(lambda: _signal(victim, signal.SIGCONT))
    network, hosts = target.network, target.hosts
    if kind == "isolate_leader":
        network.cut(hosts[leader.node_id])
        return _once(network.heal)
    if kind == "split_minority_leader":
        # The leader and one other master on the minority side, the rest (and every worker and
        # client, in the host namespace) on the other.
        others = [m for m in cluster.masters if m is not leader]
        minority = [leader, _pick(others, fault.params["pick"])]
        majority = [m for m in cluster.masters if m not in minority]
        outside = [hosts[m.node_id].address for m in majority] + [network.gateway]
        for master in minority:
            network.drop(hosts[master.node_id], outside)
        return _once(network.heal)
    if kind == "one_way_loss":
        network.drop(hosts[leader.node_id], [h.address for n, h in hosts.items() if n != leader.node_id],
                     fault.params["direction"], fault.params["probability"])
        return _once(network.heal)
    victim_host = _pick(sorted(hosts.values(), key=lambda h: h.name), fault.params["pick"])
    if kind == "slow_link":
        network.slow(victim_host, fault.params["delay_ms"], fault.params["rate_kbit"])
        if fault.params["loss"]:
            network.drop(victim_host, [h.address for h in hosts.values() if h is not victim_host] + [network.gateway],
                         "both", fault.params["loss"])
        return _once(network.heal)
    if kind == "flapping":
        return _flap(network, victim_host, fault)
    raise ValueError(kind)


def _flap(network: Network, host: Host, fault: Fault) -> Callable[[], None]:
    """Down and up in the schedule's rhythm, on a thread of its own, until healed."""
    stop = threading.Event()

    def flap() -> None:
        down = False
        for period_s in fault.params["periods_s"]:
            (network.heal if down else network.cut)(host)
            down = not down
            if stop.wait(period_s):
                break

    thread = threading.Thread(target=flap, name="flapping", daemon=True)
    thread.start()

    def heal() -> None:
        stop.set()
        thread.join(10)
        network.heal()

    return _once(heal)


def _once(action: Callable[[], object]) -> Callable[[], None]:
    done = []

    def heal() -> None:
        if not done:
            done.append(True)
            action()

    return heal
