"""Unit tests of the lock table (protocols/locks.py): every rule of its docstring, plus a
property test over random command sequences (one holder per key, tokens grow per key)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.locks import (
    Acquire,
    CancelWait,
    ExpireLocks,
    ExtendAllLeases,
    LeasesExtended,
    LockDenied,
    LockExpired,
    LockGranted,
    LockNotHeld,
    LockQueued,
    LockReleased,
    LockRenewed,
    LocksExpired,
    LockTable,
    Release,
    Renew,
    WaitCancelled,
)
from protocols.wire import ErrorRecord, decode, encode

KEY = "deploy-lock"


class Log:
    """Applies commands at consecutive Raft indexes, as a master's apply loop would."""

    def __init__(self, table: LockTable | None = None, first_index: int = 1) -> None:
        self.table = table or LockTable()
        self.index = first_index - 1

    def apply(self, command):
        self.index += 1
        return self.table.apply(self.index, command)

    def reply(self, command):
        return self.apply(command).reply


def acquire(owner, now_ms=0, ttl_ms=1000, wait=False, key=KEY, metadata=None):
    return Acquire(key, owner, ttl_ms, metadata or {}, now_ms, wait)


# --------------------------------------------------------------------------- grant, token


def test_free_lock_is_granted_with_the_raft_index_as_token():
    log = Log(first_index=7)
    reply = log.reply(acquire("node1", now_ms=100, ttl_ms=500, metadata={"job": "x"}))
    assert reply == LockGranted(KEY, "node1", 7, 600)
    info = log.table.check_lock(KEY, now_ms=200)
    assert (info.holder, info.token, info.metadata) == ("node1", 7, {"job": "x"})
    assert (info.acquired_ms, info.expires_ms, info.waiters) == (100, 600, [])


def test_held_lock_is_denied_without_wait():
    log = Log()
    log.apply(acquire("node1"))
    assert log.reply(acquire("node2")) == LockDenied(KEY, "node1", "held")
    assert log.table.check_lock(KEY, 0).waiters == []


def test_reacquire_by_holder_renews_and_keeps_token_and_metadata():
    log = Log()
    log.apply(acquire("node1", now_ms=0, ttl_ms=1000, metadata={"a": 1}))
    log.apply(acquire("other", key="other-key"))
    reply = log.reply(acquire("node1", now_ms=400, ttl_ms=1000, metadata={"a": 2}))
    assert reply == LockGranted(KEY, "node1", 1, 1400)
    assert log.table.check_lock(KEY, 0).metadata == {"a": 1}


def test_tokens_grow_across_keys_and_regrants():
    log = Log()
    tokens = [log.reply(acquire("n", key=f"k{i}")).token for i in range(3)]
    log.apply(Release("k0", "n"))
    tokens.append(log.reply(acquire("m", key="k0")).token)
    assert tokens == sorted(tokens) and len(set(tokens)) == 4


def test_index_must_grow():
    table = LockTable()
    table.apply(5, acquire("a"))
    for index in (5, 4):
        with pytest.raises(ValueError):
            table.apply(index, acquire("b"))


# --------------------------------------------------------------------------- release, renew


def test_release_by_holder_frees_the_key():
    log = Log()
    token = log.reply(acquire("node1")).token
    assert log.reply(Release(KEY, "node1", token)) == LockReleased(KEY, "node1", token)
    assert log.table.check_lock(KEY, 0) is None and len(log.table) == 0


def test_release_checks_owner_and_token():
    log = Log()
    first = log.reply(acquire("node1")).token
    log.apply(Release(KEY, "node1", first))
    second = log.reply(acquire("node1")).token
    assert second > first
    assert log.reply(Release(KEY, "node1", first)) == LockNotHeld(KEY, "node1", "stale_token")
    assert log.reply(Release(KEY, "node2", second)) == LockNotHeld(KEY, "node2", "not_owner")
    assert log.reply(Release("nothing", "node1")) == LockNotHeld("nothing", "node1", "free")
    assert log.table.check_lock(KEY, 0).token == second
    assert log.reply(Release(KEY, "node1")) == LockReleased(KEY, "node1", second)  # no token: no check


def test_renew_extends_the_lease_and_checks_owner_and_token():
    log = Log()
    token = log.reply(acquire("node1", now_ms=0, ttl_ms=1000)).token
    assert log.reply(Renew(KEY, "node1", token, 2000, 900)) == LockRenewed(KEY, "node1", token, 2900)
    assert log.reply(Renew(KEY, "node1", token + 99, 2000, 900)).reason == "stale_token"
    assert log.reply(Renew(KEY, "node2", None, 2000, 900)).reason == "not_owner"
    assert log.table.check_lock(KEY, 2800).expires_ms == 2900


def test_renew_after_expiry_is_refused_and_expires_the_lease():
    log = Log()
    token = log.reply(acquire("node1", now_ms=0, ttl_ms=100)).token
    outcome = log.apply(Renew(KEY, "node1", token, 100, 150))
    assert outcome.reply == LockNotHeld(KEY, "node1", "expired")
    assert outcome.expired == [LockExpired(KEY, "node1", token)]
    assert len(log.table) == 0


# --------------------------------------------------------------------------- waiters


def test_waiters_queue_fifo_without_duplicates():
    log = Log()
    log.apply(acquire("holder"))
    assert log.reply(acquire("w1", wait=True)) == LockQueued(KEY, "w1", 1)
    assert log.reply(acquire("w2", wait=True)) == LockQueued(KEY, "w2", 2)
    assert log.reply(acquire("w1", wait=True)) == LockQueued(KEY, "w1", 1)
    assert log.table.check_lock(KEY, 0).waiters == ["w1", "w2"]


def test_a_queue_holds_at_most_the_stamped_number_of_waiters():
    log = Log()
    log.apply(acquire("holder"))
    limited = lambda owner: Acquire(KEY, owner, 1000, {}, 0, True, 2)  # noqa: E731
    assert log.reply(limited("w1")) == LockQueued(KEY, "w1", 1)
    assert log.reply(limited("w2")) == LockQueued(KEY, "w2", 2)
    assert log.table.queue_is_full(KEY, "w3", 2)
    refused = log.reply(limited("w3"))
    assert isinstance(refused, ErrorRecord) and refused.kind == "lock_waiters_limit"
    assert "2 waiters" in refused.message and "--lock-max-waiters" in refused.message and repr(KEY) in refused.message
    # Those already in line, and the holder, are never refused; nor is anyone without a stamped limit.
    assert not log.table.queue_is_full(KEY, "w1", 2) and not log.table.queue_is_full(KEY, "holder", 2)
    assert log.reply(limited("w1")) == LockQueued(KEY, "w1", 1)
    assert isinstance(log.reply(Acquire(KEY, "holder", 1000, {}, 0, True, 2)), LockGranted)
    assert log.reply(acquire("w3", wait=True)) == LockQueued(KEY, "w3", 3)
    assert log.table.check_lock(KEY, 0).waiters == ["w1", "w2", "w3"]
    # A limit only refuses joining the queue: a free lock is granted, a held one denied as ever.
    assert isinstance(log.reply(Acquire("other", "w3", 1000, {}, 0, True, 0)), LockGranted)
    assert log.reply(Acquire(KEY, "w4", 1000, {}, 0, False, 0)) == LockDenied(KEY, "holder", "held")


def test_release_grants_the_head_of_the_queue_only():
    log = Log()
    log.apply(acquire("holder", now_ms=0))
    log.apply(acquire("w1", wait=True, ttl_ms=300, metadata={"w": 1}))
    log.apply(acquire("w2", wait=True))
    outcome = log.apply(Release(KEY, "holder", now_ms=50))
    assert outcome.reply == LockReleased(KEY, "holder", 1)
    assert outcome.grants == [LockGranted(KEY, "w1", log.index, 350)]
    info = log.table.check_lock(KEY, 60)
    assert (info.holder, info.token, info.metadata, info.acquired_ms) == ("w1", log.index, {"w": 1}, 50)
    assert info.waiters == ["w2"]
    outcome = log.apply(Release(KEY, "w1", info.token, now_ms=70))
    assert [grant.owner for grant in outcome.grants] == ["w2"]
    assert outcome.grants[0].token == log.index > info.token


def test_release_by_a_waiter_granted_by_the_same_command_is_refused():
    # node2 waits; node1's lease is due when node2's Release arrives: the lease passes to
    # node2 (a grant to notify), but the Release was not addressed to that new lease.
    log = Log()
    log.apply(acquire("node1", now_ms=0, ttl_ms=100))
    log.apply(acquire("node2", now_ms=10, wait=True))
    outcome = log.apply(Release(KEY, "node2", None, 200))
    assert outcome.reply == LockNotHeld(KEY, "node2", "not_owner")
    assert outcome.grants == [LockGranted(KEY, "node2", 3, 1200)]
    assert log.table.check_lock(KEY, 200).holder == "node2"


def test_release_without_time_uses_the_replicated_clock():
    log = Log()
    log.apply(acquire("holder", now_ms=1000))
    log.apply(acquire("w1", wait=True, ttl_ms=100, now_ms=1200))
    assert log.apply(Release(KEY, "holder")).grants[0].expires_ms == 1300


def test_cancel_wait_removes_the_waiter():
    log = Log()
    log.apply(acquire("holder"))
    log.apply(acquire("w1", wait=True))
    log.apply(acquire("w2", wait=True))
    assert log.reply(CancelWait(KEY, "w1")) == WaitCancelled(KEY, "w1")
    assert log.reply(CancelWait(KEY, "w1")) == LockNotHeld(KEY, "w1", "not_waiting")
    assert log.reply(CancelWait("nothing", "w1")).reason == "not_waiting"
    assert [g.owner for g in log.apply(Release(KEY, "holder")).grants] == ["w2"]


def test_cancel_wait_after_the_grant_leaves_the_owner_holding():
    log = Log()
    log.apply(acquire("holder"))
    log.apply(acquire("w1", wait=True))
    log.apply(Release(KEY, "holder"))
    assert log.reply(CancelWait(KEY, "w1")) == LockNotHeld(KEY, "w1", "not_waiting")
    assert log.table.check_lock(KEY, 0).holder == "w1"


def test_a_waiter_retrying_acquire_when_its_turn_came_by_expiry_gets_that_grant():
    log = Log()
    log.apply(acquire("node1", now_ms=0, ttl_ms=100))
    log.apply(acquire("node2", now_ms=10, wait=True))
    outcome = log.apply(acquire("node2", now_ms=200, wait=True))
    assert outcome.grants == [LockGranted(KEY, "node2", 3, 1200)]
    assert outcome.reply == LockGranted(KEY, "node2", 3, 1200)


# --------------------------------------------------------------------------- expiry


def test_expiry_happens_only_through_a_command():
    log = Log()
    log.apply(acquire("node1", now_ms=0, ttl_ms=100))
    assert log.table.check_lock(KEY, 100) is None  # a read sees it is due ...
    assert log.table.expired_keys(99) == [] and log.table.expired_keys(100) == [KEY]
    assert len(log.table) == 1  # ... but only a command removes it
    outcome = log.apply(ExpireLocks(100))
    assert outcome.reply == LocksExpired([KEY])
    assert outcome.expired == [LockExpired(KEY, "node1", 1)]
    assert len(log.table) == 0 and log.table.next_expiry_ms() is None


def test_expiry_grants_the_next_waiter():
    log = Log()
    log.apply(acquire("node1", now_ms=0, ttl_ms=100))
    log.apply(acquire("node2", now_ms=10, ttl_ms=500, wait=True))
    outcome = log.apply(ExpireLocks(120))
    assert outcome.grants == [LockGranted(KEY, "node2", 3, 620)]
    assert log.table.check_lock(KEY, 130).holder == "node2"
    assert log.table.next_expiry_ms() == 620


def test_acquire_takes_an_expired_lock_but_respects_the_queue():
    log = Log()
    log.apply(acquire("node1", now_ms=0, ttl_ms=100))
    assert log.reply(acquire("node2", now_ms=100)) == LockGranted(KEY, "node2", 2, 1100)
    log.apply(acquire("node3", now_ms=150, wait=True))
    outcome = log.apply(acquire("node4", now_ms=5000, wait=True))
    assert outcome.grants == [LockGranted(KEY, "node3", 4, 6000)]
    assert outcome.reply == LockQueued(KEY, "node4", 1)


def test_next_expiry_and_expired_keys_follow_the_table():
    log = Log()
    log.apply(acquire("a", key="k1", now_ms=0, ttl_ms=300))
    log.apply(acquire("b", key="k2", now_ms=0, ttl_ms=100))
    log.apply(acquire("c", key="k3", now_ms=0, ttl_ms=200))
    assert log.table.next_expiry_ms() == 100
    assert log.table.expired_keys(250) == ["k2", "k3"]
    assert log.apply(ExpireLocks(250)).reply == LocksExpired(["k2", "k3"])
    assert [info.key for info in log.table.list_locks(0)] == ["k1"]


def test_a_lease_survives_a_leader_change():
    # Leader A's clock: a 1 s lease granted at 10_000. Leader B's clock reads 500 when it
    # takes over; it extends every lease before it expires any.
    log = Log()
    token = log.reply(acquire("node1", now_ms=10_000, ttl_ms=1000)).token
    log.apply(acquire("node2", now_ms=10_100, ttl_ms=1000, wait=True))
    # B offsets its clock to start at the replicated clock, then runs 900 ms ahead.
    assert log.table.clock_ms == 10_100
    b_now_ms = log.table.clock_ms + 900
    assert log.reply(ExtendAllLeases(b_now_ms)) == LeasesExtended(1)
    assert log.table.check_lock(KEY, b_now_ms).expires_ms == b_now_ms + 1000
    assert log.apply(ExpireLocks(b_now_ms + 999)).expired == []
    assert log.table.check_lock(KEY, b_now_ms + 999).holder == "node1"
    outcome = log.apply(ExpireLocks(b_now_ms + 1000))
    assert outcome.expired == [LockExpired(KEY, "node1", token)]
    assert outcome.grants[0].owner == "node2" and outcome.grants[0].token > token


def test_extend_all_never_shortens_a_lease():
    log = Log()
    log.apply(acquire("node1", now_ms=0, ttl_ms=10_000))
    log.apply(ExtendAllLeases(100))
    assert log.table.check_lock(KEY, 0).expires_ms == 10_100
    log.apply(Renew(KEY, "node1", None, 50_000, 200))
    log.apply(ExtendAllLeases(300))
    assert log.table.check_lock(KEY, 0).expires_ms == 50_300


def test_the_replicated_clock_never_runs_backwards():
    # A new leader whose clock reads earlier than the log's time cannot expire anything sooner.
    log = Log()
    log.apply(acquire("node1", now_ms=5000, ttl_ms=100))
    log.apply(ExtendAllLeases(10))
    assert log.table.clock_ms == 5000
    assert log.table.check_lock(KEY, 5099).expires_ms == 5100
    assert log.apply(ExpireLocks(20)).expired == []
    assert log.reply(acquire("node2", now_ms=30)) == LockDenied(KEY, "node1", "held")


# --------------------------------------------------------------------------- robustness


def test_malformed_and_unknown_commands_are_answered_not_raised():
    log = Log()
    assert log.reply(acquire("node1", ttl_ms=0)).reason.startswith("invalid")
    assert log.reply(Acquire("", "node1", 10, {}, 0)).reason.startswith("invalid")
    assert log.reply(Acquire(KEY, "node1", 10, "meta", 0)).reason.startswith("invalid")
    assert log.reply(Release(KEY, 7)).reason.startswith("invalid")
    assert log.reply(Renew(KEY, "node1", None, -5, 0)).reason.startswith("invalid")
    assert log.reply("garbage") == ErrorRecord("unknown_command", "str")
    assert len(log.table) == 0


def test_records_travel_on_the_wire():
    log = Log()
    log.apply(acquire("holder"))
    log.apply(acquire("w1", wait=True))
    outcome = log.apply(Release(KEY, "holder", 1, 10))
    assert decode(encode(outcome)) == outcome
    command = acquire("node1", metadata={"a": [1, 2]}, wait=True)
    assert decode(encode(command)) == command
    assert decode(encode(log.table.check_lock(KEY, 0))) == log.table.check_lock(KEY, 0)


def test_snapshot_round_trip_keeps_behaviour():
    log = Log()
    log.apply(acquire("a", key="k1", now_ms=0, ttl_ms=300, metadata={"x": 1}))
    log.apply(acquire("b", key="k1", wait=True, ttl_ms=50))
    log.apply(acquire("c", key="k2", now_ms=10, ttl_ms=100))
    snapshot = log.table.to_snapshot()
    assert decode(encode(snapshot)) == snapshot  # msgpack-native
    restored = LockTable.from_snapshot(decode(encode(snapshot)))
    assert restored.to_snapshot() == snapshot
    assert restored.last_index == 3 and restored.clock_ms == 10
    copy = Log(restored, first_index=4)
    log.apply(ExpireLocks(400))
    copy.apply(ExpireLocks(400))
    assert restored.to_snapshot() == log.table.to_snapshot()


def test_logs_acquire_and_release(caplog):
    log = Log()
    with caplog.at_level(logging.INFO, logger="agentflow.lock"):
        log.apply(acquire("node1"))
        log.apply(Release(KEY, "node1"))
    assert [r.getMessage() for r in caplog.records] == [
        "Acquired lock 'deploy-lock' for node1",
        "Lock 'deploy-lock' released by node1",
    ]


def test_module_is_pure():
    source = Path(__file__).parent.parent / "protocols" / "locks.py"
    banned = {"time", "random", "threading", "socket", "os", "zmq", "pykka", "asyncio"}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            continue
        assert not banned.intersection(names), names


# --------------------------------------------------------------------------- property

owners = st.sampled_from(["a", "b", "c"])
keys = st.sampled_from(["k1", "k2"])
tokens = st.one_of(st.none(), st.integers(0, 40))
time_steps_ms = st.integers(0, 150)
commands = st.one_of(
    st.tuples(st.just("acquire"), keys, owners, st.integers(1, 300), st.booleans(), time_steps_ms),
    st.tuples(st.just("release"), keys, owners, tokens, st.booleans(), time_steps_ms),
    st.tuples(st.just("renew"), keys, owners, tokens, st.integers(1, 300), time_steps_ms),
    st.tuples(st.just("cancel"), keys, owners, st.none(), st.none(), time_steps_ms),
    st.tuples(st.just("expire"), keys, owners, st.none(), st.none(), time_steps_ms),
    st.tuples(st.just("extend"), keys, owners, st.none(), st.none(), time_steps_ms),
)


def _build(step, now_ms):
    kind, key, owner, a, b, _ = step
    if kind == "acquire":
        return Acquire(key, owner, a, {}, now_ms, b)
    if kind == "release":
        return Release(key, owner, a, now_ms if b else None)
    if kind == "renew":
        return Renew(key, owner, a, b, now_ms)
    if kind == "cancel":
        return CancelWait(key, owner)
    if kind == "expire":
        return ExpireLocks(now_ms)
    return ExtendAllLeases(now_ms)


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, max_size=60), st.integers(1, 5))
def test_one_holder_per_key_and_tokens_grow(steps, index_stride):
    """Replays the outcomes into a model: a grant never lands on a key someone else holds,
    a new grant's token beats every earlier token of its key, and the table agrees."""
    table = LockTable()
    holders: dict[str, tuple[str, int]] = {}  # key -> (owner, token), from outcomes only
    last_token: dict[str, int] = {}
    index, now_ms = 0, 0
    for step in steps:
        index += index_stride
        now_ms += step[-1]
        outcome = table.apply(index, _build(step, now_ms))
        for expired in outcome.expired:
            assert holders.pop(expired.key) == (expired.owner, expired.token)
        if isinstance(outcome.reply, LockReleased):  # its grants, if any, follow the release
            assert holders.pop(outcome.reply.key) == (outcome.reply.owner, outcome.reply.token)
        granted = list(outcome.grants)
        if isinstance(outcome.reply, LockGranted):
            granted.append(outcome.reply)
        for grant in granted:
            current = holders.get(grant.key)
            if current is not None:  # only an idempotent re-acquire by the holder itself
                assert current == (grant.owner, grant.token)
                continue
            assert grant.token > last_token.get(grant.key, 0)
            assert grant.token == index
            last_token[grant.key] = grant.token
            holders[grant.key] = (grant.owner, grant.token)
        for key in ("k1", "k2"):
            lease = table._leases.get(key)
            assert (None if lease is None else (lease.holder, lease.token)) == holders.get(key)
            if lease is not None:
                owners_seen = [waiter.owner for waiter in lease.waiters]
                assert len(owners_seen) == len(set(owners_seen))
                assert lease.holder not in owners_seen
    restored = LockTable.from_snapshot(decode(encode(table.to_snapshot())))
    assert restored.to_snapshot() == table.to_snapshot()
