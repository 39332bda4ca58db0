"""RegistryActor: the leader's table of workers, a service of the SchedulerActor.

Role: owns the ``WorkerRegistry`` (through ``protocols.rounds.RegistryService``): registration,
heartbeats and load (memory pressure included), health checks, drains and goodbyes, resource
reservations, placing a dispatch round's candidates, fit checks for submissions, the workers'
table. Its one client is the scheduler, which sends it at most one ``RegistryRequest`` per batch
of messages it handles; every request is answered with a ``RegistryReply`` (it carries the free
slots back), told to the scheduler of this node.

Rules: spawned pinned, beside the scheduler, so a round costs no thread hand-off; it shares no
memory with another actor: what it knows comes in requests, what it says goes out in replies.
"""

from __future__ import annotations

from typing import Any

from protocols.names import SCHEDULER_ACTOR
from protocols.registry import HealthCheckConfig
from protocols.rounds import RegistryRequest, RegistryService
from protocols.wire import ErrorRecord
from runtime.actor import Actor


class RegistryActor(Actor):
    def __init__(self, health: HealthCheckConfig | None = None, reply_to: str = SCHEDULER_ACTOR) -> None:
        super().__init__()
        self.service = RegistryService(health)
        self.reply_to = reply_to
        self._scheduler = None

    def receive(self, message: Any) -> Any:
        if type(message) is not RegistryRequest:
            return ErrorRecord("unknown_message", type(message).__name__)
        reply = self.service.handle(message)
        if self._scheduler is None:
            self._scheduler = self.node.lookup((self.node.node_id, self.reply_to))
        self._scheduler.tell(reply)
        return None
