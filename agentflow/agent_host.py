"""An agent host process: a node that hosts one agent class in the foreground until SIGTERM.

    agentflow agent run examples.agents.solver:Solver --agent-id solver-1 --group solvers

Role: composition only. Loads ``MODULE:CLASS`` (an ``AgentActor`` subclass), starts a node that
knows the cluster, spawns the agent (which registers it), and on SIGTERM/SIGINT stops it (which
unregisters it). Exit 0 after a clean stop, 1 if the agent could not start, 2 for bad arguments.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import uuid

from actors.agent import AgentActor
from agentflow.addresses import advertised_address, parse_advertise
from runtime.agents import AgentCommunicationError
from runtime.client import ClusterUnavailable
from runtime.future import RemoteError
from runtime.log import configure_logging, get_logger
from runtime.node import Node
from runtime.security import CurveKeys

log = get_logger("agent")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class AgentSpecError(ValueError):
    """A MODULE:CLASS that does not name an agent class."""


def load_agent_class(spec: str) -> type[AgentActor]:
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise AgentSpecError(f"{spec!r}: expected MODULE:CLASS, e.g. examples.agents.solver:Solver")
    if os.getcwd() not in sys.path:  # as `python -m` does: a module of the current project is found
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AgentSpecError(f"cannot import {module_name}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, AgentActor)):
        raise AgentSpecError(f"{spec} is not an AgentActor subclass")
    return cls


def run_agent(spec: str, agent_id: str, master_urls: str | list[str], *, group: str = "",
              subscriptions: list[str] | tuple[str, ...] = (), host: str = "127.0.0.1", port: int = 0,
              node_id: str | None = None, mailbox_limit: int | None = None, pinned: bool = False,
              stop: threading.Event | None = None, advertise: str | None = None,
              curve: CurveKeys | None = None) -> int:
    """Host one agent until SIGTERM/SIGINT (or ``stop``); returns the exit code. ``advertise``
    (HOST[:PORT]) is the address other nodes reach it at (agentflow/addresses.py)."""
    configure_logging()
    try:
        cls = load_agent_class(spec)
        advertise_host, advertise_port = advertised_address(host, parse_advertise(advertise))
    except (AgentSpecError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    stop = stop or threading.Event()
    previous = {}
    on_main_thread = threading.current_thread() is threading.main_thread()  # where signals can be handled
    if on_main_thread:
        previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    node_id = node_id or f"agent-host-{agent_id}-{uuid.uuid4().hex[:6]}"
    try:
        node = Node(node_id, host=host, port=port, master_urls=master_urls, advertise_host=advertise_host,
                    advertise_port=advertise_port, curve=curve).start()
    except Exception as exc:  # a bad master URL, a taken port
        log.error("Agent host %s cannot start: %s", node_id, exc)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED
    gatekeeper = node.transport.gatekeeper
    if gatekeeper is not None and on_main_thread:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: gatekeeper.reload())  # new keys, tenants
    try:
        try:
            node.spawn(cls, agent_id=agent_id, group=group, subscriptions=list(subscriptions),
                       mailbox_limit=mailbox_limit, pinned=pinned)
        except (AgentCommunicationError, RemoteError, ClusterUnavailable, ValueError) as exc:
            log.error("Agent %s cannot start: %s", agent_id, exc)
            return EXIT_FAILED
        stop.wait()
        return EXIT_OK
    finally:
        node.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
