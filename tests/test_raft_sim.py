"""Simulated Raft clusters under faults (tests/raftsim.py): safety after every step, liveness at
the end. A failure prints ``seed=N`` and the one-line command that replays it, e.g.::

    .venv/bin/python -m tests.raftsim --scenario five --seed 17

The CI slice runs a few hundred bounded seeds (~15 s here); ``pytest -m soak -o addopts=''``
(or ``make soak``) runs thousands of longer ones.
"""

from __future__ import annotations

import pytest

from protocols.raft import RaftCore, RaftLog, VoteResponse
from tests.raftsim import SCENARIOS, Cluster, Faults, SafetyViolation, run_seed

# scenario -> number of seeds in the CI slice
CI_SLICE = {
    "three": 100,
    "three_snapshots": 40,
    "five": 80,
    "three_membership": 60,
    "three_join": 60,
    "five_membership": 60,
    "three_harsh": 80,
    "three_plain": 60,
    "three_crashy": 100,
    "five_crashy": 60,
    "five_chaos": 50,
    "three_flapping": 50,
}


def _check(seed: int, scenario: str, steps: int | None = None) -> None:
    run_seed(seed, scenario, steps)  # raises SafetyViolation with the seed and the replay command


@pytest.mark.parametrize("scenario", sorted(CI_SLICE))
def test_simulated_cluster_is_safe_and_live(scenario):
    for seed in range(CI_SLICE[scenario]):
        _check(seed, scenario)


def test_simulation_is_deterministic():
    first, second = run_seed(42, "five_membership"), run_seed(42, "five_membership")
    assert first.sent_count == second.sent_count and first.committed == second.committed
    assert list(first.trace) == list(second.trace)


def test_simulation_exercises_the_interesting_paths():
    """Guards the harness itself: a run that never elects, snapshots or rejects proves little."""
    coverage = {}
    for seed in range(20):
        for key, count in run_seed(seed, "three_membership").coverage.items():
            coverage[key] = coverage.get(key, 0) + count
    for key in ("AppendReject", "InstallSnapshot", "InstallSnapshotLaterChunk", "SnapshotResponse",
                "snapshot_installed", "TimeoutNow", "read_state", "applied_kind1", "applied_kind2",
                "RequestVote"):
        assert coverage.get(key, 0) > 0, key


def test_snapshot_transfers_are_cut_short_and_their_chunks_lost_in_the_snapshot_scenario():
    """Guards the snapshot scenario: transfers in several chunks, some abandoned unfinished (a new
    leader, a newer snapshot), chunks resent after a loss and duplicates refused, on the way."""
    stats, coverage = {}, {}
    for seed in range(20):
        cluster = run_seed(seed, "three_snapshots")
        for key, count in cluster.coverage.items():
            coverage[key] = coverage.get(key, 0) + count
        for node in cluster.live():  # (a node's counters start again when it restarts)
            for key, count in node.core.stats.items():
                stats[key] = stats.get(key, 0) + count
    assert coverage["InstallSnapshotLaterChunk"] > 2 * coverage["snapshot_installed"] > 0
    for key in ("snapshot_transfer_abandoned", "snapshot_chunk_resent", "snapshot_chunk_duplicate"):
        assert stats.get(key, 0) > 0, (key, stats)


def test_a_flapping_link_never_deposes_a_healthy_leader():
    """The follower on the flapping link is told its leader is gone each time (it forgets it and
    campaigns at once), but the other follower still hears from the leader and refuses."""
    for seed in range(20):
        cluster = run_seed(seed, "three_flapping_only")
        assert cluster.coverage["leader_gone_hint"] > 5
        assert len(cluster.leader_of_term) == 1, (seed, cluster.leader_of_term)


def test_followers_told_of_a_crashed_leader_elect_a_new_one_within_a_few_ticks():
    for seed in range(20):
        cluster = Cluster(seed, 3, Faults(drop=0.0, duplicate=0.0, crash=0.0, crash_mid_ready=0.0, partition=0.0,
                                          transfer=0.0, crash_hint=1.0))
        for _ in range(1000):  # simulated ticks: a lossless network elects within a few timeouts
            if len(cluster.leaders()) == 1 and all(n.core.leader_id for n in cluster.live()):
                break
            cluster.step(faulty=False)
        else:
            raise AssertionError(f"seed {seed}: no leader followed by all within 1000 ticks")
        old = cluster.leaders()[0]
        cluster.crash(old.node_id)
        assert len(cluster.campaigns) == 2
        for ticks in range(1, 100):
            cluster.step(faulty=False)
            if cluster.leaders():
                break
        # An election timeout is 10-20 ticks here; the hint makes it the first follower's campaign
        # delay (0-1 tick) plus the pre-vote and vote round trips (one tick each way).
        assert ticks <= 6, (seed, ticks)


def _grant_every_vote(core: RaftCore, m) -> None:
    core._send(VoteResponse(core._id, m.src, m.term, True, m.pre_vote))
    if not m.pre_vote:
        core._vote = m.src


def _append_without_truncating(log: RaftLog, entries) -> bool:
    log.entries.extend(entries)
    return False


@pytest.mark.parametrize("plant", [
    (RaftCore, "_handle_vote_request", _grant_every_vote),  # one vote per term, up-to-date logs
    (RaftLog, "truncate_and_append", _append_without_truncating),  # log matching
])
def test_the_checks_catch_a_planted_safety_bug(plant, monkeypatch):
    """Guards the checks themselves: with a known safety bug planted, a few seeds must fail."""
    monkeypatch.setattr(*plant)
    with pytest.raises(SafetyViolation):
        for seed in range(20):
            run_seed(seed, "five")


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_soak(scenario):
    for seed in range(10_000, 12_000):
        _check(seed, scenario, steps=1000)
