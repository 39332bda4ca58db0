"""QueueActor: the leader's priority queue of ready tasks, a service of the SchedulerActor.

Role: owns the ``PriorityTaskQueue`` (through ``protocols.rounds.QueueService``): enqueue,
remove, reprioritize, lend the top candidates to a dispatch round and settle the loan, stats.
Its one client is the scheduler, which sends it at most one ``QueueRequest`` per batch of
messages it handles; the requests that ask something are answered with a ``QueueReply``,
told to the scheduler of this node.

Rules: spawned pinned, beside the scheduler, so a round costs no thread hand-off; it shares no
memory with another actor: what it knows comes in requests, what it says goes out in replies.
"""

from __future__ import annotations

from protocols.names import SCHEDULER_ACTOR
from protocols.queue import DEFAULT_AGING_MS_PER_POINT
from protocols.rounds import QueueRequest, QueueService
from runtime.actor import ServiceActor


class QueueActor(ServiceActor):
    request_type = QueueRequest

    def __init__(self, aging_ms_per_point: int = DEFAULT_AGING_MS_PER_POINT, reply_to: str = SCHEDULER_ACTOR) -> None:
        super().__init__(QueueService(aging_ms_per_point), reply_to)
