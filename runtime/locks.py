"""Distributed locks from Python: the seed's ``DistributedLock`` and ``AutoRenewLock``, made safe.

    client = Client("127.0.0.1:6767,127.0.0.1:6768,127.0.0.1:6769")
    lock = DistributedLock(client, owner="node1", ttl_s=30.0)
    if lock.acquire("deploy-lock", metadata={"job": 7}):
        write_with_fencing(lock.token)          # the storage rejects tokens older than it has seen
        lock.release("deploy-lock")
    with AutoRenewLock(client, "deploy-lock", owner="node1", ttl_s=10.0, wait_s=60.0) as held:
        run_long_job(fencing_token=held.token)  # renewed every ttl/3 in the background

Rules:

* Every call goes to the LockActor on the leader (``Client.call`` follows redirects) and has a
  deadline: ``ClusterUnavailable`` when no leader answers in time.
* Each command carries the client's session (one per thread, numbered 1, 2, 3...; see
  ``Client.next_command``) and a retry re-sends the same number, so the cluster applies it once.
* The fencing token of a grant is the Raft index that granted it; it only grows. A holder must
  present it to whatever it protects: a lease can end (expiry) while a slow holder still runs.
* ``acquire_blocking`` waits in the cluster's FIFO queue (no polling storm): it asks in slices
  shorter than one ask's deadline; on giving up it leaves the queue with ``CancelWait``, and if
  the grant beat the cancel it keeps the lock rather than leaving it to expire.
* ``release(key, wait=False)`` does not wait for the commit (see ``DistributedLock.release``):
  for a holder that is done with the resource and need not know the release took effect.
* Units are in the names: ``ttl_s`` and ``max_duration_s`` in seconds, wire values in ms.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from typing import Any, Callable

from protocols.locks import (
    Acquire,
    CancelWait,
    LockCall,
    LockGranted,
    LockInfo,
    LockQueued,
    LockReleased,
    LockRenewed,
    LockShow,
    Release,
    Renew,
    WaitCancelled,
)
from protocols.names import LOCK_ACTOR
from runtime.client import PER_TRY_TIMEOUT_S, Client, ClusterUnavailable

__all__ = ["AutoRenewLock", "ClusterUnavailable", "DistributedLock", "LockInfo", "LockLost", "LockTimeout",
           "lock_info_document", "process_owner", "run_locked", "user_owner"]

log = logging.getLogger("agentflow.lock")

# How long the leader holds one waiting acquire. A waiter asks again after each slice, and the
# leader takes a queued owner that stopped asking for its abandon_ms (actors/lock.py: 3 s) out
# of the queue, so a slice must end well within that.
WAIT_SLICE_S = 0.5


class LockTimeout(TimeoutError):
    """``acquire_blocking`` did not get the lock within ``max_duration_s``."""


class LockLost(Exception):
    """An ``AutoRenewLock`` could not renew its lease: another owner may hold the lock now."""


def _ms(seconds: float) -> int:
    return max(1, int(round(seconds * 1000)))


class DistributedLock:
    """Locks of one ``owner`` with leases of ``ttl_s`` seconds, through ``client``."""

    def __init__(self, client: Client, owner: str, ttl_s: float = 30.0, call_timeout_s: float | None = None) -> None:
        if not owner:
            raise ValueError("a lock owner must be a non-empty string")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.client = client
        self.owner = owner
        self.ttl_s = ttl_s
        self.call_timeout_s = call_timeout_s
        self.tokens: dict[str, int] = {}  # key -> fencing token of the grant this owner holds
        self.token: int | None = None  # token of the last grant

    # ------------------------------------------------------------------ calls

    def _call(self, body: Any, wait_ms: int = 0, timeout_s: float | None = None) -> Any:
        timeout_s = self.call_timeout_s if timeout_s is None else timeout_s
        # The leader holds a waiting acquire for up to wait_ms: the ask must outlive that.
        return self.client.call(LOCK_ACTOR, LockCall(self.client.next_command(body), wait_ms), timeout_s,
                                per_try_timeout_s=PER_TRY_TIMEOUT_S + wait_ms / 1000)

    def _granted(self, reply: LockGranted) -> bool:
        self.tokens[reply.key] = reply.token
        self.token = reply.token
        return True

    @staticmethod
    def _refuse_invalid(reply: Any) -> None:
        reason = getattr(reply, "reason", "")
        if reason.startswith("invalid"):
            raise ValueError(reason)

    # ------------------------------------------------------------------ the seed's API

    def acquire(self, key: str, metadata: dict | None = None) -> bool:
        """Take ``key`` now if it is free (or already ours: a renewal); False when held."""
        reply = self._call(Acquire(key, self.owner, _ms(self.ttl_s), dict(metadata or {}), 0, False))
        if isinstance(reply, LockGranted):
            return self._granted(reply)
        self._refuse_invalid(reply)
        return False

    def acquire_blocking(self, key: str, metadata: dict | None = None, max_duration_s: float = 30.0) -> bool:
        """Wait in line for ``key`` up to ``max_duration_s``; True when granted, else LockTimeout."""
        deadline = time.monotonic() + max_duration_s
        acquire = Acquire(key, self.owner, _ms(self.ttl_s), dict(metadata or {}), 0, True)
        while True:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            reply = self._call(acquire, wait_ms=_ms(min(WAIT_SLICE_S, remaining_s)))
            if isinstance(reply, LockGranted):
                return self._granted(reply)
            if not isinstance(reply, LockQueued):
                self._refuse_invalid(reply)
                raise RuntimeError(f"unexpected answer to a blocking acquire of {key!r}: {reply!r}")
        reply = self._call(CancelWait(key, self.owner))
        if not isinstance(reply, WaitCancelled):
            # The grant came before the cancel: keep it (an acquire by the holder returns its token).
            if self.acquire(key, metadata):
                return True
        raise LockTimeout(f"lock {key!r} not acquired by {self.owner} within {max_duration_s} s"
                          f" (held by {self._holder_or_none(key)})")

    def _holder_or_none(self, key: str) -> str | None:
        try:
            info = self.check_lock(key)
        except ClusterUnavailable:
            return None
        return info.holder if info is not None else None

    def release(self, key: str, wait: bool = True) -> bool:
        """Give ``key`` back; False when this owner does not hold it (or holds a newer grant).

        ``wait=False`` sends the release one-way to the leader and returns True at once, without
        waiting for its commit. Safe for the lock: the next owner is granted only through the
        committed release (or the lease's expiry), and a release that is lost (a leader change,
        a client that exits right away) leaves the lease to end at its TTL. This owner's next
        call to the same leader is proposed after the release. With no leader known yet it
        waits after all."""
        release = LockCall(self.client.next_command(Release(key, self.owner, self.tokens.get(key), 0)))
        if not wait and self.client.tell_leader(LOCK_ACTOR, release):
            self.tokens.pop(key, None)
            return True
        reply = self.client.call(LOCK_ACTOR, release, self.call_timeout_s)
        self.tokens.pop(key, None)
        if isinstance(reply, LockReleased):
            return True
        self._refuse_invalid(reply)
        return False

    def renew(self, key: str, extend_s: float | None = None, timeout_s: float | None = None) -> bool:
        """Set the lease to end ``extend_s`` (default: the TTL) from now; False when not held."""
        ttl_ms = _ms(self.ttl_s if extend_s is None else extend_s)
        reply = self._call(Renew(key, self.owner, self.tokens.get(key), ttl_ms, 0), timeout_s=timeout_s)
        if isinstance(reply, LockRenewed):
            self.tokens[key] = reply.token
            return True
        self._refuse_invalid(reply)
        return False

    def check_lock(self, key: str) -> LockInfo | None:
        """Who holds ``key`` (linearizable): holder, token, metadata, times, waiters; None if free."""
        return self.client.call(LOCK_ACTOR, LockShow(key), self.call_timeout_s)

    def list_locks(self) -> list[LockInfo]:
        return self.client.call(LOCK_ACTOR, LockShow(None), self.call_timeout_s)


class AutoRenewLock:
    """Hold ``key`` for the length of a ``with`` block, renewed every third of the TTL.

    ``wait_s`` 0 tries once (``LockTimeout`` when held); more waits in line that long. If a
    renewal fails (the lease was lost, or no leader answered before the lease would end), the
    lock sets ``lost`` and calls ``on_lost(key, error)`` once, then stops renewing: the block's
    work should stop using ``token``. ``max_renewals`` caps the renewals (None: no cap), so a
    stuck block cannot hold the lock forever. On exit the lock is released (if still held) and
    the renewal thread is stopped and joined."""

    def __init__(self, client: Client, key: str, owner: str | None = None, ttl_s: float = 30.0,
                 wait_s: float = 0.0, metadata: dict | None = None,
                 on_lost: Callable[[str, BaseException | None], None] | None = None,
                 max_renewals: int | None = None) -> None:
        # The default owner is unique to this lock: two holders with one name would share a lease.
        self.lock = DistributedLock(client, owner or f"{client.client_id}-{uuid.uuid4().hex[:6]}", ttl_s)
        self.key = key
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.metadata = metadata
        self.on_lost = on_lost
        self.max_renewals = max_renewals
        self.renewals = 0
        self.lost = False
        self.token: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> AutoRenewLock:
        if self.wait_s > 0:
            self.lock.acquire_blocking(self.key, self.metadata, max_duration_s=self.wait_s)
        elif not self.lock.acquire(self.key, self.metadata):
            raise LockTimeout(f"lock {self.key!r} is held by another owner")
        self.token = self.lock.tokens[self.key]
        self._thread = threading.Thread(target=self._renew_loop, name=f"renew-{self.key}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost:
            try:
                self.lock.release(self.key)
            except ClusterUnavailable as error:
                log.warning("Lock '%s' not released (it expires by its TTL): %s", self.key, error)

    def _renew_loop(self) -> None:
        interval_s = self.ttl_s / 3
        lease_end = time.monotonic() + self.ttl_s
        while not self._stop.wait(interval_s):
            if self.max_renewals is not None and self.renewals >= self.max_renewals:
                return
            # The new lease starts when the leader applies the renewal, after we send it: counting
            # from the send keeps our idea of the lease's end no later than the real one.
            sent = time.monotonic()
            error: BaseException | None = None
            try:
                # A renewal that lands after the lease ended is worthless: bound it by what is left.
                renewed = self.lock.renew(self.key, timeout_s=max(0.05, lease_end - sent))
            except Exception as exc:  # noqa: BLE001 - whatever the failure, the lease is not renewed
                renewed, error = False, exc
            if renewed:
                self.renewals += 1
                lease_end = sent + self.ttl_s
                continue
            self.lost = True
            log.warning("Lock '%s' lost by %s: %s", self.key, self.lock.owner, error or "not held any more")
            if self.on_lost is not None:
                self.on_lost(self.key, error)
            return


# --------------------------------------------------------------------------- command-line helpers


def user_owner() -> str:
    """An owner name that is the same across separate commands of one user: ``$USER@host``."""
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def process_owner() -> str:
    """An owner name unique to this process: ``host-pid``."""
    return f"{socket.gethostname()}-{os.getpid()}"


def lock_info_document(info: LockInfo | None, key: str) -> dict:
    """The JSON form of ``agentflow lock show``: ``held`` false, or the lease's fields."""
    if info is None:
        return {"key": key, "held": False}
    return {"key": info.key, "held": True, "holder": info.holder, "token": info.token,
            "metadata": info.metadata, "acquired_ms": info.acquired_ms, "expires_ms": info.expires_ms,
            "ttl_ms": info.expires_ms - info.acquired_ms, "waiters": list(info.waiters)}


def run_locked(client: Client, key: str, argv: list[str], owner: str, ttl_s: float, wait_s: float) -> int:
    """Run ``argv`` while holding ``key`` (renewed); returns its exit status, like flock(1).

    The child gets the fencing token in ``AGENTFLOW_LOCK_TOKEN`` (and the key in
    ``AGENTFLOW_LOCK_KEY``). If the lease is lost while it runs, the child is terminated (it is
    no longer protected) and the status is 1 unless the child failed otherwise."""
    if not argv:
        raise ValueError("no command given: agentflow lock run KEY -- CMD ...")
    lost = threading.Event()
    child: list[subprocess.Popen] = []

    def on_lost(_key: str, _error: BaseException | None) -> None:
        lost.set()
        if child:
            child[0].terminate()

    with AutoRenewLock(client, key, owner=owner, ttl_s=ttl_s, wait_s=wait_s, on_lost=on_lost) as held:
        env = dict(os.environ, AGENTFLOW_LOCK_TOKEN=str(held.token), AGENTFLOW_LOCK_KEY=key)
        try:
            child.append(subprocess.Popen(argv, env=env))
        except OSError as error:
            log.error("cannot run %s: %s", argv[0], error)
            return 127
        if lost.is_set():
            child[0].terminate()
        try:
            status = child[0].wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the child too (same process group): let it finish, then release.
            child[0].terminate()
            status = child[0].wait()
    if lost.is_set():
        log.error("Lock '%s' was lost while %s ran; it was terminated", key, argv[0])
        return status if status > 0 else 1
    return status if status >= 0 else 128 - status
