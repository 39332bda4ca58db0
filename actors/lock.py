"""LockActor: serves the replicated lock table (protocols/locks.py) to clients, on every master.

Role: on the leader it turns clients' ``LockCall`` asks into Raft proposals (stamped with the
leader's clock), answers them from the apply results, holds a queued waiter's answer until
``Applied`` shows its grant, expires leases by proposing ``ExpireLocks`` on ticks, and answers
``LockShow`` reads after a read index. On a follower it answers ``Redirect``.

Rules:

* Spawned pinned (the transport thread, like the RaftActor): no thread hand-off between the two,
  and it never blocks. It talks to the RaftActor only through the ``ControlPlane`` the master
  hands it (propose, read, watch, the replicated state, redirect); every proposal of one
  transport round shares one SQLite commit (ARCHITECTURE §5 rule 7).
* Clients' commands arrive wrapped in ``ClientCommand`` and are proposed as they are (only
  ``now_ms``, and an ``Acquire``'s ``max_waiters``, are stamped), so a retried command is
  applied once. Clients may not propose
  ``ExpireLocks`` or ``ExtendAllLeases``: only the leader's clock ends leases.
* Time: ``now_ms`` is this process's monotonic clock plus an offset that only grows, kept at or
  above every ``now_ms`` applied so far, so the leader never stamps a time behind the table's
  ``clock_ms`` (a new leader's monotonic clock is not the old one's).
* A new leader proposes ``ExtendAllLeases`` before anything else of its term (log order makes
  every later command, client or expiry, apply after it) and proposes no ``ExpireLocks`` until
  it is applied (ARCHITECTURE §5 rule 2).
* A waiter is queued in the replicated table; its answer is soft state of the leader. A client
  re-asks within ``abandon_ms`` while it waits; a queued owner that stops asking is taken out of
  the queue with ``CancelWait`` so that a dead client is never granted the lock. A queue holds
  at most ``max_waiters`` owners: the leader stamps its limit into every ``Acquire`` (the table
  enforces it at apply, the same on every master) and refuses a waiter beyond it at once when
  the applied table is full already (``lock_waiters_limit``, counted as every refusal is).
* A ``LockCall`` told rather than asked (``release(wait=False)``) is answered to nobody. It is
  proposed like any other, except that a release of a lock nobody waits for is held until the
  next call arrives (from anyone) or the next tick, and proposed just before it: a client that
  releases and goes on to its next call pays one Raft write for both, and no call can observe
  the delay (every call proposes what is held first; only a read may still see the lock held,
  as it may for any release not yet committed).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from actors.control_plane import Applied, ControlPlane, LeadershipChanged
from protocols.control import ClientCommand
from protocols.locks import (
    CLIENT_LOCK_COMMANDS,
    Acquire,
    CancelWait,
    ExpireLocks,
    ExtendAllLeases,
    LockCall,
    LockGranted,
    LockOutcome,
    LockQueued,
    LockShow,
    Release,
    waiters_limit_error,
)
from protocols.wire import ASK, ErrorRecord, Redirect, Tick
from runtime.actor import Actor, Deferred
from runtime.future import Future, RemoteError
from runtime.log import get_logger

log = get_logger("lock")

LOCK_WATCH_PREFIX = "lock."
# A proposal is answered when applied or failed when leadership is lost; this bounds the rest.
PROPOSE_TIMEOUT_S = 30.0
ABANDON_SWEEP_EVERY_MS = 1000
MAX_WAIT_MS = 30_000  # the longest a client's answer is held, whatever it asks
# Owners queued behind one lock, at most (a master's --lock-max-waiters): each is replicated
# state on every master and in every snapshot, and a grant walks the queue.
DEFAULT_MAX_WAITERS = 1000
MAX_HELD_RELEASES = 1000  # one-way releases waiting for the next call's Raft write; more go at once


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class LockActor(Actor):
    def __init__(self, control: ControlPlane, tick_s: float = 0.1, abandon_ms: int = 3000,
                 max_waiters: int = DEFAULT_MAX_WAITERS) -> None:
        super().__init__()
        if not isinstance(max_waiters, int) or max_waiters < 1:
            raise ValueError(f"the waiters per lock must be at least 1, not {max_waiters!r}")
        self.control = control
        self.max_waiters = max_waiters
        self.tick_s = tick_s
        self.abandon_ms = abandon_ms
        self._clock_offset_ms = 0
        self._is_leader = False
        self._term = 0
        self._extended_term: int | None = None  # the term whose ExtendAllLeases has applied
        self._expire_in_flight = False
        # (key, owner) -> [(deadline_ms, answer, queued reply)]: held answers of waiters
        self._held: dict[tuple[str, str], list[tuple[int, Deferred, LockQueued]]] = {}
        self._waiter_seen_ms: dict[tuple[str, str], int] = {}
        self._held_releases: list[Any] = []  # one-way releases held for the next call's Raft write
        self._last_sweep_ms = 0
        self._timer_id: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        me = self.node.lookup(self.address)
        self.control.watch(LOCK_WATCH_PREFIX, me)
        self._timer_id = self.node.every(self.tick_s, me, "lock")

    def on_stop(self) -> None:
        if self._timer_id is not None:
            self.node.cancel_timer(self._timer_id)

    def now_ms(self) -> int:
        return monotonic_ms() + self._clock_offset_ms

    def _clock_at_least(self, replicated_ms: Any) -> None:
        if isinstance(replicated_ms, int) and not isinstance(replicated_ms, bool):
            behind_ms = replicated_ms - self.now_ms()
            if behind_ms > 0:
                self._clock_offset_ms += behind_ms

    # ------------------------------------------------------------------ messages

    def receive(self, message: Any) -> Any:
        kind = type(message)
        if kind is LockCall:
            return self._call(message)
        if kind is LockShow:
            return self._show(message)
        if kind is Applied:
            self._applied(message)
            return None
        if kind is LeadershipChanged:
            self._leadership_changed(message)
            return None
        if kind is Tick:
            self._tick()
            return None
        return ErrorRecord("unknown_message", kind.__name__)

    def _call(self, call: LockCall) -> Any:
        envelope = call.command
        body = envelope.body if isinstance(envelope, ClientCommand) else envelope
        kind = type(body)
        if kind not in CLIENT_LOCK_COMMANDS:
            return ErrorRecord("bad_request", f"a LockCall carries Acquire, Release, Renew or CancelWait, "
                                              f"not {kind.__name__}")
        if not isinstance(call.wait_ms, int) or call.wait_ms < 0:
            return ErrorRecord("bad_request", "wait_ms must be a non-negative integer")
        if not self._is_leader:
            return self._redirect()
        now_ms = self.now_ms()
        wait_until_ms = 0
        if kind is Acquire:
            if body.wait and self.control.state.locks.queue_is_full(body.key, body.owner, self.max_waiters):
                return waiters_limit_error(body.key, self.max_waiters)  # refused before it costs a commit
            body = Acquire(body.key, body.owner, body.ttl_ms, body.metadata, now_ms, body.wait, self.max_waiters)
            if body.wait and call.wait_ms > 0:
                # The hold ends wait_ms after the request arrived, not after its commit: the
                # client's ask has a deadline of its own.
                wait_until_ms = now_ms + min(call.wait_ms, MAX_WAIT_MS)
                self._waiter_seen_ms[(body.key, body.owner)] = now_ms
        elif kind is not CancelWait:
            body = dataclasses.replace(body, now_ms=now_ms)
        envelope = ClientCommand(envelope.client_id, envelope.seq, body) if isinstance(envelope, ClientCommand) else body
        self._propose_held_releases()  # before this call: a client's commands apply in its order
        if self._inbound is not None and self._inbound.kind != ASK:
            # Sent one-way (``release(wait=False)``): nobody is told how it went. A release that
            # nobody waits for is held for the next call (or tick) and goes into its Raft write:
            # a client that releases and goes on to its next call pays one write for both.
            if kind is Release and not self._awaited(body.key) and len(self._held_releases) < MAX_HELD_RELEASES:
                self._held_releases.append(envelope)
            else:
                self._propose(envelope, self._one_way_done)
            return None
        answer = self.defer()
        self._propose(envelope, lambda future: self._answer_call(future, answer, wait_until_ms))
        return answer

    def _awaited(self, key: str) -> bool:
        """Whether someone waits for ``key``: queued (as applied), or asking to be."""
        return self.control.state.locks.has_waiters(key) or any(where[0] == key for where in self._waiter_seen_ms)

    def _propose_held_releases(self) -> None:
        held, self._held_releases = self._held_releases, []
        for envelope in held:
            self._propose(envelope, self._one_way_done)

    def _one_way_done(self, future: Future) -> None:
        try:
            result = future.get()
        except (RemoteError, TimeoutError):
            return  # not committed: the lease ends at its TTL, as for any release that never came
        self._count_refusal(result.reply if isinstance(result, LockOutcome) else result)

    def _count_refusal(self, reply: Any) -> None:
        """A refusal of the table (after the commit) is counted like one the actor answers at once."""
        if isinstance(reply, ErrorRecord):
            self.node.count(f"rejected_{reply.kind}")

    def _answer_call(self, future: Future, answer: Deferred, wait_until_ms: int) -> None:
        try:
            result = future.get()
        except RemoteError as exc:
            answer.fail(exc.kind, exc.message)
            return
        except TimeoutError:
            answer.fail("not_committed", "the proposal did not commit in time; retry")
            return
        if isinstance(result, Redirect):
            answer.resolve(result)
            return
        reply = result.reply if isinstance(result, LockOutcome) else result
        if isinstance(reply, ErrorRecord):
            self._count_refusal(reply)
            answer.fail(reply.kind, reply.message)
        elif isinstance(reply, LockQueued) and wait_until_ms and self._is_leader:
            info = self.control.state.locks.check_lock(reply.key, 0)  # 0: the entry as it stands, due or not
            if info is not None and info.holder == reply.owner:
                # A retried command answered from its session: the grant came in the meantime.
                answer.resolve(LockGranted(info.key, info.holder, info.token, info.expires_ms))
            elif info is not None and reply.owner in info.waiters and wait_until_ms > self.now_ms():
                # The grant is a later entry, not applied yet: Applied will bring it.
                self._held.setdefault((reply.key, reply.owner), []).append((wait_until_ms, answer, reply))
            else:
                answer.resolve(reply)  # no longer queued (cancelled), or out of time: the client asks again
        else:
            answer.resolve(reply)

    def _show(self, show: LockShow) -> Any:
        if not self._is_leader:
            return self._redirect()
        answer = self.defer()
        key = show.key

        def answer_read(future: Future) -> None:
            try:
                result = future.get()
            except (RemoteError, TimeoutError) as exc:
                answer.fail("not_committed", f"the read index was not confirmed: {exc}; retry")
                return
            if isinstance(result, Redirect):
                answer.resolve(result)
                return
            # The read index is applied: the table is at least as new as any acknowledged write.
            # Its leases are read at the replicated clock, not this master's: a renewal stamped
            # before now but committed after this read would otherwise find alive a lease this
            # read called free (a chaos run's lock history caught it: pause_leader seed 8).
            locks = self.control.state.locks
            now_ms = locks.clock_ms
            answer.resolve(locks.check_lock(key, now_ms) if key is not None else locks.list_locks(now_ms))

        self.control.read("members", {}, PROPOSE_TIMEOUT_S).add_done_callback(answer_read)
        return answer

    def _redirect(self) -> Redirect:
        """Name the leader as this master knows it (None while an election is under way, or while
        this master leads but has not been told so yet: the client pauses and asks again)."""
        redirect = self.control.redirect()
        return Redirect(None, None) if redirect.leader_id == self.node.node_id else redirect

    def _propose(self, body: Any, on_done: Callable[[Future], None]) -> None:
        self.control.propose(body, PROPOSE_TIMEOUT_S).add_done_callback(on_done)

    # ------------------------------------------------------------------ replicated events

    def _applied(self, applied: Applied) -> None:
        for index, command, result in applied.items:
            self._clock_at_least(getattr(command, "now_ms", None))
            if not isinstance(result, LockOutcome):
                continue
            # Only grants made by this entry (token == index): a retried command answered from its
            # session carries its first outcome, whose grants are old news and may be over.
            for grant in result.grants:
                if grant.token == index:
                    self._granted(grant)
            if isinstance(result.reply, LockGranted) and result.reply.token == index:
                self._granted(result.reply)

    def _granted(self, grant: LockGranted) -> None:
        where = (grant.key, grant.owner)
        self._waiter_seen_ms.pop(where, None)
        for _, answer, _ in self._held.pop(where, ()):
            answer.resolve(grant)

    def _leadership_changed(self, change: LeadershipChanged) -> None:
        self._is_leader = change.is_leader
        self._term = change.term
        self._expire_in_flight = False
        self._waiter_seen_ms.clear()
        self._held_releases.clear()  # lost with the leadership, as a one-way release may be: TTL ends them
        if change.is_leader:
            self._clock_at_least(self.control.state.locks.clock_ms)
            term = change.term

            def extended(future: Future) -> None:
                try:
                    result = future.get()
                except (RemoteError, TimeoutError):
                    return  # leadership lost before it committed: nothing to expire here
                if not isinstance(result, Redirect) and self._term == term and self._is_leader:
                    self._extended_term = term

            self._propose(ExtendAllLeases(self.now_ms()), extended)
            log.debug("Node %s leads locks in term %d; leases extended first", self.node.node_id, term)
        else:
            # Held answers say "still queued"; the client asks again and finds the new leader.
            held, self._held = self._held, {}
            for answers in held.values():
                for _, answer, queued in answers:
                    answer.resolve(queued)

    # ------------------------------------------------------------------ ticks

    def _tick(self) -> None:
        if not self._is_leader:
            return
        self._propose_held_releases()  # no call came: they go on their own
        now_ms = self.now_ms()
        self._release_due_held_answers(now_ms)
        if self._extended_term != self._term:
            return
        locks = self.control.state.locks
        if not self._expire_in_flight:
            next_expiry_ms = locks.next_expiry_ms()
            if next_expiry_ms is not None and next_expiry_ms <= now_ms:
                self._expire_in_flight = True
                self._propose(ExpireLocks(now_ms), self._expire_done)
        if now_ms - self._last_sweep_ms >= ABANDON_SWEEP_EVERY_MS:
            self._last_sweep_ms = now_ms
            self._cancel_abandoned_waiters(now_ms)

    def _expire_done(self, future: Future) -> None:
        self._expire_in_flight = False

    def _release_due_held_answers(self, now_ms: int) -> None:
        for where in [w for w, answers in self._held.items() if any(d <= now_ms for d, _, _ in answers)]:
            keep = []
            for deadline_ms, answer, queued in self._held[where]:
                if deadline_ms <= now_ms:
                    answer.resolve(queued)
                else:
                    keep.append((deadline_ms, answer, queued))
            if keep:
                self._held[where] = keep
            else:
                del self._held[where]

    def _cancel_abandoned_waiters(self, now_ms: int) -> None:
        """Queued owners that stopped asking (a dead client) leave the queue before their turn."""
        waiting = self.control.state.locks.waiting()
        queued = set(waiting)
        for where in waiting:  # in table order: the proposals go out in the same order every time
            if where in self._held:
                self._waiter_seen_ms[where] = now_ms
            seen_ms = self._waiter_seen_ms.setdefault(where, now_ms)
            if now_ms - seen_ms > self.abandon_ms:
                key, owner = where
                log.info("Waiter %s for lock '%s' stopped asking; it leaves the queue", owner, key)
                self._waiter_seen_ms[where] = now_ms
                self._propose(CancelWait(key, owner), lambda future: None)
        for where in [w for w in self._waiter_seen_ms if w not in queued]:
            del self._waiter_seen_ms[where]
