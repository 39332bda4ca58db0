"""The lock table: leases with fencing tokens, as a pure replicated state machine.

Every master holds one ``LockTable`` and applies the same committed lock commands to it, in log
order, with ``apply(index, command)``. The table is pure and deterministic: no clock, no
randomness, no threads, no I/O, no set iteration. Time arrives inside commands (``now_ms``, read
by the leader from its monotonic clock when it proposes), so every master computes the same
thing. The actor around it (``actors/lock.py``) proposes commands, answers clients and notifies
waiters from the ``LockOutcome`` each apply returns.

Rules (docs/ARCHITECTURE.md §5 rule 2):

* A grant carries a fencing token: the Raft index of the entry that granted it. Indexes only
  grow, so tokens strictly grow for a key and across keys. A re-acquire by the current holder
  is a renewal and returns the same token.
* ``Acquire(wait=True)`` on a held lock queues the owner FIFO (once: no duplicate entries).
  When the lock is released or expires, only the head of the queue is granted (no thundering
  herd); the grant is in ``LockOutcome.grants`` so the runtime can notify that waiter.
  ``CancelWait`` removes a waiter (a client that gave up). A queue is bounded by the
  ``max_waiters`` the leader stamps into each ``Acquire`` (a master's setting travels inside the
  command, like time): a new waiter beyond it is refused with ``ErrorRecord("lock_waiters_limit")``.
* ``Release`` and ``Renew`` check the owner, and the token when one is given: a stale token
  (from an earlier grant) is rejected.
* A lease expires only through a committed command. Every command is applied at its
  ``now_ms``: a lease with ``expires_ms <= now_ms`` is expired for it. ``ExpireLocks(now_ms)``,
  proposed by the leader when ``expired_keys(now_ms)`` is not empty (``next_expiry_ms()`` says
  when to look), expires them all; ``Acquire``, ``Renew`` and ``Release`` expire the lease of
  the key they touch first. Expired leases leave the table (or pass to the next waiter).
* A new leader's clock is not the old leader's. Before it expires anything it proposes
  ``ExtendAllLeases(now_ms)``, which sets every live lease's ``expires_ms`` to
  ``max(expires_ms, now_ms + ttl_ms)``: a holder keeps at least one full TTL after a leader
  change, measured by the clock that will expire it.
* The replicated clock never runs backwards: a command is applied at
  ``max(command.now_ms, clock_ms)`` where ``clock_ms`` is the latest time applied so far
  (kept in snapshots). A new leader should start its clock at or after ``clock_ms`` (offset
  its monotonic clock); if it does not, time simply stands still until it catches up, which
  delays expiry but never hastens it.
* ``apply`` never raises on a malformed or unknown command (a committed entry must not crash
  every master): it answers with ``LockDenied``/``ErrorRecord``. It raises ``ValueError`` only
  on an index that does not grow, which is a bug in the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from protocols.wire import ErrorRecord, record

log = logging.getLogger("agentflow.lock")

SNAPSHOT_VERSION = 1
# Times and TTLs above this (about 285 years in ms) are refused: a clock plus a TTL must stay
# within msgpack's 64-bit integers, or the table could no longer be snapshotted (fuzzing found a
# TTL of 2**64-1 that did just that).
MAX_MS = 2**53


# --------------------------------------------------------------------------- commands


@record("lock.acquire")
class Acquire:
    """Take ``key`` for ``owner`` for ``ttl_ms``; when held and ``wait``, join the FIFO queue
    unless it has ``max_waiters`` already (None: no bound; the leader stamps its own)."""

    key: str
    owner: str
    ttl_ms: int
    metadata: dict
    now_ms: int
    wait: bool = False
    max_waiters: int | None = None


@record("lock.release")
class Release:
    """Give ``key`` back. ``token`` None skips the fencing check; ``now_ms`` None means the
    replicated clock (used to time the next waiter's lease)."""

    key: str
    owner: str
    token: int | None = None
    now_ms: int | None = None


@record("lock.renew")
class Renew:
    """Extend the holder's lease to ``now_ms + ttl_ms``."""

    key: str
    owner: str
    token: int | None
    ttl_ms: int
    now_ms: int


@record("lock.cancel_wait")
class CancelWait:
    """Take ``owner`` out of the queue of ``key`` (the client stopped waiting).

    If the lock was granted to ``owner`` before this command, the reply is
    ``LockNotHeld(reason="not_waiting")`` and ``owner`` holds it: the client should release it."""

    key: str
    owner: str


@record("lock.expire")
class ExpireLocks:
    """Expire every lease with ``expires_ms <= now_ms``; proposed by the leader."""

    now_ms: int


@record("lock.extend_all")
class ExtendAllLeases:
    """First lock command of a new leader: every live lease gets at least one more TTL."""

    now_ms: int


LOCK_COMMANDS = (Acquire, Release, Renew, CancelWait, ExpireLocks, ExtendAllLeases)


# --------------------------------------------------------------------------- results


@record("lock.granted")
class LockGranted:
    key: str
    owner: str
    token: int
    expires_ms: int


@record("lock.denied")
class LockDenied:
    """``reason``: ``held`` (by ``holder``), or ``invalid: ...`` for a malformed command."""

    key: str
    holder: str | None
    reason: str


@record("lock.queued")
class LockQueued:
    """``owner`` waits for ``key``; ``position`` 1 is next in line."""

    key: str
    owner: str
    position: int


@record("lock.released")
class LockReleased:
    key: str
    owner: str
    token: int


@record("lock.renewed")
class LockRenewed:
    key: str
    owner: str
    token: int
    expires_ms: int


@record("lock.not_held")
class LockNotHeld:
    """``reason``: ``free``, ``not_owner``, ``stale_token``, ``expired`` or ``not_waiting``."""

    key: str
    owner: str
    reason: str


@record("lock.wait_cancelled")
class WaitCancelled:
    key: str
    owner: str


@record("lock.expired")
class LockExpired:
    key: str
    owner: str
    token: int


@record("lock.extended")
class LeasesExtended:
    count: int


@record("lock.expire_done")
class LocksExpired:
    keys: list


@record("lock.outcome")
class LockOutcome:
    """What one apply produced.

    ``reply`` answers whoever proposed the command. ``grants`` are the locks handed to waiters
    by this command (notify each owner). ``expired`` are the leases it ended by expiry."""

    reply: Any
    grants: list
    expired: list


@record("lock.info")
class LockInfo:
    """A live lease as ``check_lock`` reports it; ``waiters`` in queue order."""

    key: str
    holder: str
    token: int
    metadata: dict
    acquired_ms: int
    expires_ms: int
    waiters: list


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Effects:
    """What an apply did besides its reply: grants to waiters and expired leases."""

    grants: list[LockGranted] = field(default_factory=list)
    expired: list[LockExpired] = field(default_factory=list)


@dataclass(slots=True)
class _Waiter:
    owner: str
    ttl_ms: int
    metadata: dict


@dataclass(slots=True)
class _Lease:
    """One key's entry: the holder's lease and the queue behind it."""

    holder: str
    token: int
    ttl_ms: int
    metadata: dict
    acquired_ms: int
    expires_ms: int
    waiters: list[_Waiter] = field(default_factory=list)


def _invalid(command: Any) -> str | None:
    """Why a lock command is malformed, or None; checked at apply so bad entries cannot crash."""
    key = getattr(command, "key", "")
    if not isinstance(key, str) or not key:
        return "invalid: key must be a non-empty string"
    owner = getattr(command, "owner", "")
    if not isinstance(owner, str) or not owner:
        return "invalid: owner must be a non-empty string"
    ttl_ms = getattr(command, "ttl_ms", 1)
    if not isinstance(ttl_ms, int) or isinstance(ttl_ms, bool) or not 0 < ttl_ms <= MAX_MS:
        return f"invalid: ttl_ms must be a positive integer up to {MAX_MS}"
    return None


def waiters_limit_error(key: str, limit: int) -> ErrorRecord:
    """The refusal of one more waiter for ``key``: it names the limit and where it is set."""
    return ErrorRecord("lock_waiters_limit", f"lock {key!r} already has {limit} waiters, the most a master allows "
                                             f"(agentflow master --lock-max-waiters)")


class LockTable:
    """All locks of the cluster. Apply committed commands; read with ``check_lock``."""

    def __init__(self) -> None:
        # Insertion order comes only from applied commands, so it is the same on every master.
        self._leases: dict[str, _Lease] = {}
        self.last_index = 0
        self.clock_ms = 0

    # ----------------------------------------------------------------- apply

    def apply(self, index: int, command: Any) -> LockOutcome:
        """Apply the command committed at Raft ``index``; indexes must strictly grow."""
        if index <= self.last_index:
            raise ValueError(f"lock command index {index} <= last applied {self.last_index}")
        self.last_index = index
        effects = _Effects()
        handler = self._handlers.get(type(command))
        if handler is None:
            reply = ErrorRecord("unknown_command", type(command).__name__)
        else:
            reply = handler(self, index, command, effects)
        return LockOutcome(reply, effects.grants, effects.expired)

    def _advance_clock(self, now_ms: Any) -> int:
        if isinstance(now_ms, int) and not isinstance(now_ms, bool) and self.clock_ms < now_ms <= MAX_MS:
            self.clock_ms = now_ms
        return self.clock_ms

    def _apply_acquire(self, index: int, cmd: Acquire, effects: _Effects) -> Any:
        problem = _invalid(cmd)
        if problem is None and not isinstance(cmd.metadata, dict):
            problem = "invalid: metadata must be a map"
        if problem is not None:
            return LockDenied(str(cmd.key), None, problem)
        now_ms = self._advance_clock(cmd.now_ms)
        self._expire_key_if_due(cmd.key, index, now_ms, effects)
        lease = self._leases.get(cmd.key)
        if lease is None:
            lease = _Lease(cmd.owner, index, cmd.ttl_ms, dict(cmd.metadata), now_ms, now_ms + cmd.ttl_ms)
            self._leases[cmd.key] = lease
            log.info("Acquired lock '%s' for %s", cmd.key, cmd.owner)
            return LockGranted(cmd.key, cmd.owner, index, lease.expires_ms)
        if lease.holder == cmd.owner:
            # A retry or a re-acquire by the holder: a renewal, same token, same metadata.
            lease.ttl_ms = cmd.ttl_ms
            lease.expires_ms = now_ms + cmd.ttl_ms
            return LockGranted(cmd.key, cmd.owner, lease.token, lease.expires_ms)
        if not cmd.wait:
            return LockDenied(cmd.key, lease.holder, "held")
        for position, waiter in enumerate(lease.waiters, start=1):
            if waiter.owner == cmd.owner:
                return LockQueued(cmd.key, cmd.owner, position)
        limit = cmd.max_waiters
        if isinstance(limit, int) and len(lease.waiters) >= limit:
            return waiters_limit_error(cmd.key, limit)
        lease.waiters.append(_Waiter(cmd.owner, cmd.ttl_ms, dict(cmd.metadata)))
        return LockQueued(cmd.key, cmd.owner, len(lease.waiters))

    def _held_lease(self, index: int, cmd: Release | Renew, effects: _Effects) -> tuple[Any, _Lease | None, int]:
        """Check a Release or Renew: ``(refusal, None, now_ms)``, or ``(None, lease, now_ms)``
        when ``cmd.owner`` holds ``cmd.key`` (with ``cmd.token``, if given)."""
        problem = _invalid(cmd)
        if problem is not None:
            return LockNotHeld(str(cmd.key), str(cmd.owner), problem), None, 0
        now_ms = self._advance_clock(cmd.now_ms)
        refusal = self._check_holder(cmd.key, cmd.owner, cmd.token, index, now_ms, effects)
        if refusal is not None:
            return refusal, None, now_ms
        return None, self._leases[cmd.key], now_ms

    def _apply_release(self, index: int, cmd: Release, effects: _Effects) -> Any:
        refusal, lease, now_ms = self._held_lease(index, cmd, effects)
        if lease is None:
            return refusal
        released = LockReleased(cmd.key, cmd.owner, lease.token)
        log.info("Lock '%s' released by %s", cmd.key, cmd.owner)
        self._pass_on(cmd.key, lease, index, now_ms, effects)
        return released

    def _apply_renew(self, index: int, cmd: Renew, effects: _Effects) -> Any:
        refusal, lease, now_ms = self._held_lease(index, cmd, effects)
        if lease is None:
            return refusal
        lease.ttl_ms = cmd.ttl_ms
        lease.expires_ms = now_ms + cmd.ttl_ms
        return LockRenewed(cmd.key, cmd.owner, lease.token, lease.expires_ms)

    def _apply_cancel_wait(self, index: int, cmd: CancelWait, effects: _Effects) -> Any:
        problem = _invalid(cmd)
        if problem is not None:
            return LockNotHeld(str(cmd.key), str(cmd.owner), problem)
        lease = self._leases.get(cmd.key)
        if lease is not None:
            for position, waiter in enumerate(lease.waiters):
                if waiter.owner == cmd.owner:
                    del lease.waiters[position]
                    return WaitCancelled(cmd.key, cmd.owner)
        return LockNotHeld(cmd.key, cmd.owner, "not_waiting")

    def _apply_expire(self, index: int, cmd: ExpireLocks, effects: _Effects) -> Any:
        now_ms = self._advance_clock(cmd.now_ms)
        keys = self.expired_keys(now_ms)
        for key in keys:
            self._expire_key_if_due(key, index, now_ms, effects)
        return LocksExpired(keys)

    def _apply_extend_all(self, index: int, cmd: ExtendAllLeases, effects: _Effects) -> Any:
        now_ms = self._advance_clock(cmd.now_ms)
        for lease in self._leases.values():
            lease.expires_ms = max(lease.expires_ms, now_ms + lease.ttl_ms)
        return LeasesExtended(len(self._leases))

    _handlers = {
        Acquire: _apply_acquire,
        Release: _apply_release,
        Renew: _apply_renew,
        CancelWait: _apply_cancel_wait,
        ExpireLocks: _apply_expire,
        ExtendAllLeases: _apply_extend_all,
    }

    # ----------------------------------------------------------------- transitions

    def _check_holder(
        self, key: str, owner: str, token: Any, index: int, now_ms: int, effects: _Effects
    ) -> LockNotHeld | None:
        """None when ``owner`` holds a live lease on ``key`` (with ``token``, if given)."""
        if self._expire_key_if_due(key, index, now_ms, effects) == owner:
            return LockNotHeld(key, owner, "expired")
        lease = self._leases.get(key)
        if lease is None:
            return LockNotHeld(key, owner, "free")
        # A lease that this very command passed to a waiter (by expiry) is not the one the
        # sender addressed: it learns of that grant from the notification, not from this reply.
        if lease.holder != owner or lease.token == index:
            return LockNotHeld(key, owner, "not_owner")
        if token is not None and token != lease.token:
            return LockNotHeld(key, owner, "stale_token")
        return None

    def _expire_key_if_due(self, key: str, index: int, now_ms: int, effects: _Effects) -> str | None:
        """Expire the lease on ``key`` if due at ``now_ms``; returns the holder it ended."""
        lease = self._leases.get(key)
        if lease is None or lease.expires_ms > now_ms:
            return None
        holder = lease.holder
        log.info("Lock '%s' expired (held by %s)", key, holder)
        effects.expired.append(LockExpired(key, holder, lease.token))
        self._pass_on(key, lease, index, now_ms, effects)
        return holder

    def _pass_on(self, key: str, lease: _Lease, index: int, now_ms: int, effects: _Effects) -> None:
        """The holder is gone: grant to the head of the queue only, or drop the key."""
        if not lease.waiters:
            del self._leases[key]
            return
        head = lease.waiters.pop(0)
        lease.holder = head.owner
        lease.token = index
        lease.ttl_ms = head.ttl_ms
        lease.metadata = head.metadata
        lease.acquired_ms = now_ms
        lease.expires_ms = now_ms + head.ttl_ms
        log.info("Acquired lock '%s' for %s", key, head.owner)
        effects.grants.append(LockGranted(key, head.owner, index, lease.expires_ms))

    # ----------------------------------------------------------------- reads

    def check_lock(self, key: str, now_ms: int) -> LockInfo | None:
        """The live lease on ``key`` at ``now_ms``, or None when free or expired by then."""
        lease = self._leases.get(key)
        if lease is None or lease.expires_ms <= now_ms:
            return None
        return self._info(key, lease)

    def list_locks(self, now_ms: int) -> list[LockInfo]:
        """Every live lease at ``now_ms``, in grant order of their keys."""
        return [self._info(k, l) for k, l in self._leases.items() if l.expires_ms > now_ms]

    def has_waiters(self, key: str) -> bool:
        lease = self._leases.get(key)
        return lease is not None and bool(lease.waiters)

    def queue_is_full(self, key: str, owner: str, limit: int) -> bool:
        """Whether ``owner`` would be a new waiter for ``key`` beyond ``limit`` (as applied now)."""
        lease = self._leases.get(key)
        if lease is None or lease.holder == owner or len(lease.waiters) < limit:
            return False
        return all(waiter.owner != owner for waiter in lease.waiters)

    def waiting(self) -> list[tuple[str, str]]:
        """``(key, owner)`` of every queued waiter, behind live and due leases alike."""
        return [(key, waiter.owner) for key, lease in self._leases.items() for waiter in lease.waiters]

    def expired_keys(self, now_ms: int) -> list[str]:
        """Keys whose lease is due at ``now_ms``: the leader proposes ExpireLocks when not empty."""
        return [key for key, lease in self._leases.items() if lease.expires_ms <= now_ms]

    def next_expiry_ms(self) -> int | None:
        """The earliest ``expires_ms`` in the table, or None when it is empty."""
        return min((lease.expires_ms for lease in self._leases.values()), default=None)

    def __len__(self) -> int:
        return len(self._leases)

    @staticmethod
    def _info(key: str, lease: _Lease) -> LockInfo:
        return LockInfo(
            key,
            lease.holder,
            lease.token,
            dict(lease.metadata),
            lease.acquired_ms,
            lease.expires_ms,
            [waiter.owner for waiter in lease.waiters],
        )

    # ----------------------------------------------------------------- snapshots

    def to_snapshot(self) -> dict:
        """The whole table as msgpack-native values (lists keep the order)."""
        return {
            "version": SNAPSHOT_VERSION,
            "last_index": self.last_index,
            "clock_ms": self.clock_ms,
            "locks": [
                [
                    key,
                    lease.holder,
                    lease.token,
                    lease.ttl_ms,
                    dict(lease.metadata),
                    lease.acquired_ms,
                    lease.expires_ms,
                    [[w.owner, w.ttl_ms, dict(w.metadata)] for w in lease.waiters],
                ]
                for key, lease in self._leases.items()
            ],
        }

    @classmethod
    def from_snapshot(cls, snapshot: dict) -> LockTable:
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"lock snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}")
        table = cls()
        table.last_index = snapshot["last_index"]
        table.clock_ms = snapshot["clock_ms"]
        for key, holder, token, ttl_ms, metadata, acquired_ms, expires_ms, waiters in snapshot["locks"]:
            table._leases[key] = _Lease(
                holder,
                token,
                ttl_ms,
                dict(metadata),
                acquired_ms,
                expires_ms,
                [_Waiter(owner, w_ttl_ms, dict(w_metadata)) for owner, w_ttl_ms, w_metadata in waiters],
            )
        return table


# --------------------------------------------------------------------------- requests to the LockActor
# Never committed: a client asks the LockActor on the leader, which proposes the command inside.
# Their tags start with "lockapi." so they never match the "lock." prefix of committed commands.


@record("lockapi.call")
class LockCall:
    """A client's lock command for the leader's LockActor.

    ``command`` is a ``ClientCommand`` (its session makes a retry apply once) or a bare command;
    its body must be an ``Acquire``, ``Release``, ``Renew`` or ``CancelWait``. The leader stamps
    ``now_ms`` from its own clock and proposes it. With ``Acquire(wait=True)`` and ``wait_ms`` > 0,
    a queued owner's answer is held up to ``wait_ms`` for its grant: ``LockGranted`` when it came,
    else the ``LockQueued`` (still in line: ask again, or ``CancelWait`` to give up)."""

    command: Any
    wait_ms: int = 0


@record("lockapi.show")
class LockShow:
    """A linearizable read of one lock (``LockInfo`` or None), or of every live lock (key None)."""

    key: str | None


CLIENT_LOCK_COMMANDS = (Acquire, Release, Renew, CancelWait)
