"""What reaches the Raft core from the network (protocols/raft/messages.py): hostile and malformed
messages are counted, never raised; every message round-trips the wire; the package takes its
randomness from the caller (tests/test_layers.py keeps it pure otherwise)."""

from __future__ import annotations

import random
from pathlib import Path

from protocols import wire
from protocols.raft import (
    ENTRY_NORMAL,
    AppendEntries,
    AppendResponse,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    RequestVote,
    SnapshotMeta,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from tests.raftnet import Net
from tests.test_layers import imported_modules


# --------------------------------------------------------------------------- hostile input


def test_hostile_and_malformed_messages_are_ignored_not_raised():
    net = Net()
    leader = net.elect("n1")
    net.tick(2)
    follower = net.cores["n2"]
    term, commit, last = follower.term, follower.commit_index, follower.last_index
    hostile = [
        None, 42, b"bytes", {"src": "n1"}, wire.ErrorRecord("x", "y"),
        AppendEntries("n1", "n9", term, 0, 0, [], 0),  # not for us
        AppendEntries("n2", "n2", term, 0, 0, [], 0),  # from ourselves
        AppendEntries("n1", "n2", -1, 0, 0, [], 0),
        AppendEntries("n1", "n2", True, 0, 0, [], 0),
        AppendEntries(1, "n2", term, 0, 0, [], 0),
        AppendEntries("n1", "n2", term, last, 0, ["not an entry"], 0),
        AppendEntries("n1", "n2", term, last, 0, [Entry(term, last + 5, 0, b"gap")], 0),
        AppendEntries("n1", "n2", term, last, 0, [Entry(term + 9, last + 1, 0, b"future")], 0),
        AppendEntries("n1", "n2", term, last, 0, [Entry(term, last + 1, 7, b"kind")], 0),
        AppendEntries("n1", "n2", term, 0, 0, [Entry(term, 1, 0, b"rewrite committed")], 0),
        AppendEntries("n1", "n2", term, last, leader.last_term, [], "commit"),
        Heartbeat("n1", "n2", term, 10**9, b""),
        Heartbeat("n1", "n2", term, 1, "ctx"),
        InstallSnapshot("n1", "n2", term, SnapshotMeta(1, 1, "n1", []), 0, 0, b"", True),
        InstallSnapshot("n1", "n2", term, SnapshotMeta(10**9, term + 1, [], []), 0, 0, b"", True),
        InstallSnapshot("n1", "n2", term, None, 0, 0, b"", True),
        InstallSnapshot("n1", "n2", term, SnapshotMeta(10**9, 1, [], []), 0, 2, b"beyond", False),
        InstallSnapshot("n1", "n2", term, SnapshotMeta(10**9, 1, [], []), 0, 6, b"ending", False),
        InstallSnapshot("n1", "n2", term, SnapshotMeta(10**9, 1, [], []), 0, 9, b"not done", True),
        InstallSnapshot("n1", "n2", term, SnapshotMeta(10**9, 1, [], []), -1, 9, b"x", False),
        InstallSnapshot("n1", "n2", term, SnapshotMeta(10**9, 1, [], []), 0, 9, "text", False),
        SnapshotResponse("n3", "n2", term, 1, 1, -5, False),  # a negative offset (and to a follower)
        RequestVote("n3", "n2", term, None, 0, False, False),
        VoteResponse("n3", "n2", term, "yes", False),
        TimeoutNow("n1", "n2", term - 1),
    ]
    for message in hostile:
        follower.step(message)
    assert follower.term == term and follower.leader_id == "n1"
    assert follower.commit_index <= follower.last_index and follower.commit_index >= commit
    assert "step_error" not in follower.stats and sum(follower.stats.values()) >= len(hostile) - 2
    # A follower claiming it has entries the leader never wrote must not make it commit them.
    leader.step(AppendResponse("n2", "n1", leader.term, leader.last_index + 100, False, 0, 0))
    leader.step(AppendResponse("n2", "n1", leader.term, 0, True, 10**9, 10**9))
    leader.step(HeartbeatResponse("n9", "n1", leader.term, b"ctx"))
    assert leader.commit_index <= leader.last_index and "step_error" not in leader.stats
    net.settle()
    index = leader.propose(b"still works")
    net.settle()
    net.tick()  # followers learn the new commit index from the next heartbeat
    assert net.commands("n2")[-1] == b"still works" and follower.commit_index >= index


def test_random_bytes_decoded_by_the_wire_never_break_step():
    net = Net()
    net.elect("n1")
    rng = random.Random(7)
    follower = net.cores["n2"]
    template = wire.encode(AppendEntries("n1", "n2", follower.term, 3, 1,
                                         [Entry(follower.term, 4, 0, b"x")], 3))
    for _ in range(2000):
        data = bytearray(template)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            message = wire.decode(bytes(data))
        except wire.DecodeError:
            continue
        follower.step(message)
    assert "step_error" not in follower.stats


def test_every_message_round_trips_the_wire():
    meta = SnapshotMeta(5, 2, ["n1", "n2"], ["n3"])
    messages = [
        AppendEntries("n1", "n2", 3, 4, 2, [Entry(3, 5, ENTRY_NORMAL, b"x")], 4),
        AppendResponse("n2", "n1", 3, 5, False, 0, 0),
        RequestVote("n1", "n2", 3, 4, 2, True, False),
        VoteResponse("n2", "n1", 3, True, True),
        InstallSnapshot("n1", "n2", 3, meta, 0, 5, b"state", True),
        SnapshotResponse("n2", "n1", 3, 5, 2, 4096, False),
        Heartbeat("n1", "n2", 3, 4, b"ctx"),
        HeartbeatResponse("n2", "n1", 3, b"ctx"),
        TimeoutNow("n1", "n2", 3),
    ]
    for message in messages:
        assert wire.decode(wire.encode(message)) == message


def test_the_core_takes_its_randomness_from_the_caller():
    """tests/test_layers.py keeps protocols/ free of clocks, threads, sockets and I/O, but lets the
    Raft files import ``random``: only under TYPE_CHECKING, for the type of the generator passed in."""
    package = Path(__file__).parents[1] / "protocols" / "raft"
    for path in sorted(package.glob("*.py")):
        top_level = {module.split(".")[0] for _, module in imported_modules(path, top_level_only=True)}
        assert "random" not in top_level, path.name
