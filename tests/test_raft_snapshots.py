"""The snapshot sent in chunks (protocols/raft/snapshots.py): a lagging follower gets it in as many
chunks as its size needs, one in flight at a time; a lost chunk is sent again from where the
follower stands; a new leader, a newer snapshot or a restart mid-transfer never leaves a follower
with pieces of two snapshots; hostile chunks and answers cost counters, not memory. One rule per
test, on the hand-driven network of tests/raftnet.py."""

from __future__ import annotations

import pytest

from protocols.raft import (
    AppendResponse,
    InstallSnapshot,
    RaftConfig,
    SnapshotMeta,
    SnapshotResponse,
)
from tests.raftnet import IDS, Net, drain, restored

CHUNK = 10


def chunked_net(**config) -> Net:
    return Net(config=RaftConfig(max_bytes_per_snapshot_chunk=CHUNK, **config))


def lagging_follower(net: Net, data: bytes) -> None:
    """n1 leads, n3 is cut off while entries commit, and n1 compacts them into ``data``."""
    leader = net.elect("n1")
    net.isolated = {"n3"}
    for i in range(20):
        leader.propose(b"%d" % i)
    net.settle()
    net.tick()  # n2 learns the commit index
    leader.compact(leader.applied_index, data)
    net.isolated = set()


def record_deliveries(net: Net, drop=lambda message: False) -> list:
    """Every message the net delivers from now on, in order; ``drop(message)`` True takes it off
    the network (lost, or kept by the test to deliver later)."""
    delivered = []
    deliver = net.deliver

    def recording() -> None:
        net.queue = [m for m in net.queue if not drop(m)]
        delivered.extend(m for m in net.queue if m.src not in net.isolated and m.dst not in net.isolated)
        deliver()

    net.deliver = recording
    return delivered


def chunks_to(delivered: list, node_id: str) -> list[InstallSnapshot]:
    return [m for m in delivered if type(m) is InstallSnapshot and m.dst == node_id]


def until_received(net: Net, chunks: int) -> None:
    """Tick the leader once, then deliver until n3 has received ``chunks`` chunks (no more)."""
    net.cores["n1"].tick()
    for _ in range(50):
        if net.cores["n3"].stats.get("snapshot_chunks_received", 0) == chunks:
            return
        net.process()
        net.deliver()
    raise AssertionError(f"n3 did not receive {chunks} chunks")


def leader_sending_to_a_silent_n3(net: Net) -> InstallSnapshot:
    """The first chunk n1 sends to n3, which never hears of it."""
    lost = []

    def lose_chunks(message) -> bool:
        if type(message) is InstallSnapshot:
            lost.append(message)
            return True
        return False

    record_deliveries(net, lose_chunks)
    net.tick()
    assert len(lost) == 1
    return lost[0]


def test_a_lagging_follower_gets_the_snapshot_in_chunks_one_at_a_time():
    net = chunked_net()
    data = bytes(range(95))  # ten chunks, the last of 5 bytes
    lagging_follower(net, data)
    delivered = record_deliveries(net)
    net.tick()
    chunks = chunks_to(delivered, "n3")
    assert [(c.offset, len(c.data), c.done) for c in chunks] == [
        (offset, min(CHUNK, 95 - offset), offset == 90) for offset in range(0, 95, CHUNK)]
    assert all(c.total == 95 and c.meta == chunks[0].meta for c in chunks)
    # Stop and wait: each chunk after the first follows the follower's answer to the one before.
    answers = [m for m in delivered if type(m) is SnapshotResponse]
    assert [a.offset for a in answers] == list(range(CHUNK, 95, CHUNK)) and not any(a.reject for a in answers)
    for answer in answers:
        assert delivered.index(answer) < delivered.index(chunks[answer.offset // CHUNK])
    follower, leader = net.cores["n3"], net.cores["n1"]
    assert net.disks["n3"].snapshot.data == data and follower.stats["snapshot_chunks_received"] == 10
    assert follower.commit_index == leader.commit_index and follower.last_index == leader.last_index
    assert leader.progress()["n3"]["state"] == "replicate"
    leader.propose(b"after")
    net.settle()
    net.tick()
    assert net.commands("n3")[-1] == b"after"


def test_nothing_reaches_the_ready_before_the_last_chunk():
    net = chunked_net()
    lagging_follower(net, bytes(50))
    net.cores["n1"].tick()
    snapshots = []
    for _ in range(20):
        for node_id, core in sorted(net.cores.items()):
            while core.has_ready():
                ready = core.ready()
                if node_id == "n3" and ready.snapshot is not None:
                    snapshots.append((net.cores["n3"].stats.get("snapshot_chunks_received"), ready.snapshot))
                net.disks[node_id].save(ready)
                net.queue.extend(ready.messages)
                core.advance(ready)
        net.deliver()
    assert [(count, len(s.data)) for count, s in snapshots] == [(5, 50)]


def test_a_lost_chunk_is_sent_again_from_where_the_follower_stands():
    net = chunked_net()
    data = bytes(range(60))
    lagging_follower(net, data)
    lost = []

    def lose_the_third_chunk_once(message) -> bool:
        if type(message) is InstallSnapshot and message.offset == 2 * CHUNK and not lost:
            lost.append(message)
            return True
        return False

    delivered = record_deliveries(net, lose_the_third_chunk_once)
    net.tick()
    assert lost and net.disks["n3"].snapshot is None  # stalled at 20 bytes
    net.tick(net.config.election_ticks_min)  # heartbeats answered, no progress: resent
    offsets = [c.offset for c in chunks_to(delivered, "n3")]
    assert offsets == [0, 10, 30, 40, 50] or offsets == [0, 10, 20, 30, 40, 50], offsets
    assert offsets.count(0) == 1  # the transfer did not start over
    assert net.disks["n3"].snapshot.data == data
    assert net.cores["n1"].stats["snapshot_chunk_resent"] == 1


def test_a_lost_answer_is_recovered_and_the_resent_chunk_answered_as_a_duplicate():
    net = chunked_net()
    lagging_follower(net, bytes(range(40)))
    lost = []

    def lose_an_answer_once(message) -> bool:
        if type(message) is SnapshotResponse and not lost:
            lost.append(message)
            return True
        return False

    record_deliveries(net, lose_an_answer_once)
    net.tick(net.config.election_ticks_min + 1)
    follower = net.cores["n3"]
    assert lost and follower.stats["snapshot_chunk_duplicate"] == 1
    assert net.disks["n3"].snapshot.data == bytes(range(40))


def test_a_new_leader_mid_transfer_sends_its_own_snapshot_and_the_pieces_never_mix():
    net = chunked_net()
    old = b"A" * 50
    lagging_follower(net, old)
    net.cores["n2"].compact(net.cores["n2"].applied_index, b"B" * 47)  # n2's own, taken apart
    delivered = record_deliveries(net)
    until_received(net, 2)  # two of n1's five chunks
    assert net.disks["n3"].snapshot is None
    net.isolated = {"n1"}
    for _ in range(100):  # n3 is behind: only n2 can win
        if net.cores["n2"].role == "leader":
            break
        net.tick()
    net.tick(2)
    follower = net.cores["n3"]
    assert net.disks["n3"].snapshot.data == b"B" * 47
    assert follower.stats["snapshot_transfer_abandoned"] == 1 and follower.leader_id == "n2"
    # A late chunk of the deposed leader's transfer changes nothing.
    late = chunks_to(delivered, "n3")[1]
    follower.step(InstallSnapshot(late.src, "n3", late.term, late.meta, 20, 50, b"A" * 10, False))
    assert follower.stats["stale_term"] >= 1 and follower.snapshot.data == b"B" * 47


def test_a_newer_snapshot_taken_mid_transfer_does_not_change_the_bytes_being_sent():
    net = chunked_net()
    lagging_follower(net, b"A" * 50)
    leader = net.cores["n1"]
    installed = []
    save = net.disks["n3"].save

    def saving(ready):
        if ready.snapshot is not None:
            installed.append(ready.snapshot.data)
        save(ready)

    net.disks["n3"].save = saving
    held: list = []
    holding = [False]

    def hold_for_n3(message) -> bool:
        if holding[0] and message.dst == "n3":
            held.append(message)
            return True
        return False

    record_deliveries(net, hold_for_n3)
    until_received(net, 2)
    holding[0] = True  # the third chunk waits while the leader commits more and compacts again
    for i in range(5):
        leader.propose(b"more %d" % i)
    net.settle()
    leader.compact(leader.applied_index, b"B" * 30)
    holding[0] = False
    net.queue.extend(held)
    net.settle()
    net.tick()
    # The first transfer finished with the bytes it began with; the newer snapshot came after.
    assert installed == [b"A" * 50, b"B" * 30]
    assert net.cores["n3"].applied_index == leader.applied_index


def test_a_follower_restarted_mid_transfer_is_sent_the_snapshot_from_the_start():
    net = chunked_net()
    data = bytes(range(50))
    lagging_follower(net, data)
    delivered = record_deliveries(net)
    until_received(net, 2)
    net.restart("n3")  # its partial transfer was in memory only (and its answer not sent)
    net.tick(net.config.election_ticks_min + 2)
    answers = [m for m in delivered if type(m) is SnapshotResponse]
    assert any(a.reject and a.offset == 0 for a in answers)
    assert net.cores["n3"].stats["snapshot_chunk_of_unknown_transfer"] == 1
    assert net.disks["n3"].snapshot.data == data


# --------------------------------------------------------------------------- hostile input


def follower_of_n1(**config):
    follower = restored("n2", [2], term=2, config=RaftConfig(max_snapshot_bytes=100, **config))
    drain(follower)
    return follower


def chunk(offset: int, data: bytes, total: int = 30, index: int = 9, term: int = 2) -> InstallSnapshot:
    return InstallSnapshot("n1", "n2", 2, SnapshotMeta(index, term, IDS, []), offset, total, data,
                           offset + len(data) == total)


def answers(core) -> list[tuple]:
    return [(type(m).__name__, getattr(m, "offset", getattr(m, "index", None)), m.reject) for m in drain(core)]


def test_a_chunk_at_the_wrong_offset_is_refused_with_where_the_follower_stands():
    follower = follower_of_n1()
    follower.step(chunk(0, b"a" * 10))
    assert answers(follower) == [("SnapshotResponse", 10, False)]
    follower.step(chunk(20, b"c" * 10))  # ahead: one was lost
    assert answers(follower) == [("SnapshotResponse", 10, True)]
    follower.step(chunk(0, b"a" * 10))  # behind: a duplicate
    assert answers(follower) == [("SnapshotResponse", 10, False)]
    follower.step(chunk(10, b"b" * 10))
    follower.step(chunk(20, b"c" * 10))
    assert answers(follower)[-1] == ("AppendResponse", 9, False)
    assert follower.snapshot.data == b"a" * 10 + b"b" * 10 + b"c" * 10
    assert follower.stats["snapshot_chunk_gap"] == 1 and follower.stats["snapshot_chunk_duplicate"] == 1


def test_a_chunk_of_another_snapshot_discards_the_partial_one():
    follower = follower_of_n1()
    follower.step(chunk(0, b"a" * 10))
    follower.step(chunk(10, b"x" * 10, index=12))  # another snapshot, not from its start
    assert answers(follower)[-1] == ("SnapshotResponse", 0, True)
    assert follower.stats["snapshot_transfer_abandoned"] == 1
    follower.step(chunk(10, b"b" * 10))  # the first one's next chunk: its start is gone too
    assert answers(follower) == [("SnapshotResponse", 0, True)]
    for offset, data in ((0, b"x" * 10), (10, b"y" * 10), (20, b"z" * 10)):
        follower.step(chunk(offset, data, index=12))
    assert follower.snapshot.data == b"x" * 10 + b"y" * 10 + b"z" * 10 and follower.snapshot.meta.index == 12


def test_a_transfer_declaring_more_than_the_limit_is_refused_and_holds_nothing():
    follower = follower_of_n1()
    follower.step(chunk(0, b"a" * 10, total=101))
    assert answers(follower) == [] and follower.stats["snapshot_too_large"] == 1
    assert follower._incoming_snapshot is None
    follower.step(chunk(0, b"a" * 10, total=10 ** 15))
    assert follower.stats["snapshot_too_large"] == 2 and follower._incoming_snapshot is None


@pytest.mark.parametrize("hostile", [
    InstallSnapshot("n1", "n2", 2, SnapshotMeta(9, 2, IDS, []), 25, 30, b"x" * 10, False),  # beyond
    InstallSnapshot("n1", "n2", 2, SnapshotMeta(9, 2, IDS, []), 0, 30, b"x" * 30, False),  # not done
    InstallSnapshot("n1", "n2", 2, SnapshotMeta(9, 2, IDS, []), 0, 30, b"x" * 10, True),  # done early
])
def test_data_beyond_the_declared_size_or_a_false_done_never_reaches_the_core(hostile):
    follower = follower_of_n1()
    follower.step(chunk(0, b"a" * 10))
    drain(follower)
    follower.step(hostile)
    assert answers(follower) == [] and follower.stats["dropped_bad_snapshot_chunk"] == 1
    assert follower._incoming_snapshot.received == 10  # the partial transfer is untouched


def test_hostile_answers_never_move_a_transfer_or_put_a_second_chunk_in_flight():
    net = chunked_net()
    lagging_follower(net, bytes(50))
    leader = net.cores["n1"]
    meta = leader_sending_to_a_silent_n3(net).meta
    for hostile in (SnapshotResponse("n3", "n1", leader.term, meta.index, meta.term, 10 ** 6, False),
                    SnapshotResponse("n3", "n1", leader.term, meta.index + 1, meta.term, 10, False),
                    SnapshotResponse("n3", "n1", leader.term, meta.index, meta.term, 0, True),
                    SnapshotResponse("n3", "n1", leader.term, meta.index, meta.term, 0, False)):
        leader.step(hostile)
    assert [m for m in drain(leader) if type(m) is InstallSnapshot] == []
    assert leader.stats["snapshot_ack_beyond_size"] == 1 and leader.stats["stale_snapshot_response"] == 1
    # A duplicated answer sends the next chunk once.
    ack = SnapshotResponse("n3", "n1", leader.term, meta.index, meta.term, 10, False)
    leader.step(ack)
    leader.step(ack)
    assert [m.offset for m in drain(leader) if type(m) is InstallSnapshot] == [10]
    assert "step_error" not in leader.stats


def test_an_acknowledgement_of_the_whole_snapshot_ends_the_transfer():
    net = chunked_net()
    lagging_follower(net, bytes(50))
    leader = net.cores["n1"]
    first = leader_sending_to_a_silent_n3(net)
    leader.step(AppendResponse("n3", "n1", leader.term, first.meta.index, False, 0, 0))
    assert leader.progress()["n3"]["state"] == "replicate"
