"""Client sessions (protocols/sessions.py): a retried command applies once; sessions are bounded
and evict deterministically."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import wire
from protocols.sessions import ClientSessions


# --------------------------------------------------------------------------- client sessions


def test_client_sessions_apply_a_retried_command_once():
    sessions = ClientSessions()
    runs = []

    def apply():
        runs.append(1)
        return len(runs)

    assert sessions.check_and_record("c1", 1, 10, apply) == ("new", 1)
    assert sessions.check_and_record("c1", 1, 11, apply) == ("duplicate", 1)
    assert sessions.check_and_record("c1", 2, 12, apply) == ("new", 2)
    assert sessions.check_and_record("c2", 1, 13, apply) == ("new", 3)
    assert runs == [1, 1, 1]


def test_client_sessions_are_bounded_and_evict_deterministically():
    sessions = ClientSessions(max_sessions=2, results_per_client=2)
    sessions.record("a", 1, "ra", 1)
    sessions.record("b", 1, "rb", 2)
    sessions.record("a", 2, "ra2", 3)  # a is now the most recently applied
    sessions.record("c", 1, "rc", 4)  # evicts b, the least recently applied
    assert len(sessions) == 2 and sessions.check("b", 1) == ("new", None)
    sessions.record("a", 3, "ra3", 5)  # a keeps its last two results
    assert sessions.check("a", 1) == ("expired", None)
    assert sessions.check("a", 2) == ("duplicate", "ra2")
    copy = ClientSessions.from_dict(wire.decode(wire.encode(sessions.to_dict())))
    assert copy.to_dict() == sessions.to_dict()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=80))
def test_client_sessions_remember_the_highest_seqs_whatever_their_order(seqs):
    """Against a model: a session remembers the results of its ``results_per_client`` highest
    sequence numbers; one below all of them is expired, and a snapshot keeps exactly that."""
    sessions = ClientSessions(results_per_client=4)
    remembered: dict[int, str] = {}
    for index, seq in enumerate(seqs, 1):
        status, result = sessions.check_and_record("c", seq, index, lambda: f"r{seq}")
        if seq in remembered:
            assert (status, result) == ("duplicate", remembered[seq])
        elif remembered and seq < min(remembered):
            assert (status, result) == ("expired", None)
        else:
            assert (status, result) == ("new", f"r{seq}")
            remembered[seq] = f"r{seq}"
            if len(remembered) > 4:
                del remembered[min(remembered)]
    copy = ClientSessions.from_dict(wire.decode(wire.encode(sessions.to_dict())))
    for seq in range(1, 42):
        assert copy.check("c", seq) == sessions.check("c", seq)
