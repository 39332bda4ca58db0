"""RegistryActor: the leader's table of workers, a service of the SchedulerActor.

Role: owns the ``WorkerRegistry`` (through ``protocols.rounds.RegistryService``): registration,
heartbeats and load (memory pressure included), health checks, drains and goodbyes, resource
reservations, placing a dispatch round's candidates, fit checks for submissions, the workers'
table. Its one client is the scheduler, which sends it at most one ``RegistryRequest`` per batch
of messages it handles; a request that may change the free capacity (more than releases) or
asks something is answered with a ``RegistryReply``, told to the scheduler of this node.

Rules: spawned pinned, beside the scheduler, so a round costs no thread hand-off; it shares no
memory with another actor: what it knows comes in requests, what it says goes out in replies.
"""

from __future__ import annotations

from protocols.names import SCHEDULER_ACTOR
from protocols.registry import HealthCheckConfig
from protocols.rounds import RegistryRequest, RegistryService
from runtime.actor import ServiceActor


class RegistryActor(ServiceActor):
    request_type = RegistryRequest

    def __init__(self, health: HealthCheckConfig | None = None, reply_to: str = SCHEDULER_ACTOR) -> None:
        super().__init__(RegistryService(health), reply_to)
