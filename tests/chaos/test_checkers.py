"""The history checkers on histories written by hand: each accepts a known-good history and
finds the violation in a known-bad one (a checker that cannot fail proves nothing)."""

from __future__ import annotations

import random

from tests.chaos.history import History, Op
from tests.chaos.linearizability import check_part
from tests.chaos.lockcheck import check_invariants, check_linearizable


def op(process, kind, invoke, complete, result, **args) -> Op:
    return Op(process, kind, args, float(invoke), None if complete is None else float(complete), result)


def numbered(ops: list[Op]) -> list[Op]:
    for position, each in enumerate(ops):
        each.id = position
    return ops


def granted(token):
    return {"type": "granted", "token": token}


# --------------------------------------------------------------------------- the search itself


class Register:
    """A read/write register, the textbook model for linearizability checkers."""

    def init(self):
        return 0

    def step(self, state, o):
        if o.kind == "write":
            return [o.args["value"]]
        if o.pending or o.result["value"] == state:
            return [state]
        return []

    def partition(self, ops):
        return {"register": ops}


def test_register_history_with_overlapping_calls_is_linearizable():
    ops = numbered([
        op("a", "write", 0, 10, {}, value=1),
        op("b", "read", 5, 15, {"value": 0}),   # overlaps the write: may come first
        op("c", "read", 12, 20, {"value": 1}),
    ])
    assert check_part(ops, Register()).ok


def test_register_read_of_an_overwritten_value_is_not_linearizable():
    ops = numbered([
        op("a", "write", 0, 10, {}, value=1),
        op("a", "write", 11, 20, {}, value=2),
        op("b", "read", 25, 30, {"value": 1}),  # both writes completed before it started
    ])
    verdict = check_part(ops, Register())
    assert verdict.ok is False
    assert "NOT linearizable" in verdict.explain()
    assert verdict.stuck_at and verdict.stuck_at[-1].id == 2


def test_pending_write_may_take_effect_late_or_never():
    late = numbered([
        op("a", "write", 0, None, None, value=7),   # timed out: unknown outcome
        op("b", "read", 50, 60, {"value": 0}),
        op("b", "read", 70, 80, {"value": 7}),       # took effect after all, between the reads
    ])
    assert check_part(late, Register()).ok
    never = numbered([op("a", "write", 0, None, None, value=7), op("b", "read", 50, 60, {"value": 0})])
    assert check_part(never, Register()).ok
    impossible = numbered([op("a", "write", 0, None, None, value=7), op("b", "read", 50, 60, {"value": 8})])
    assert check_part(impossible, Register()).ok is False


def test_search_gives_up_rather_than_running_for_ever():
    rng = random.Random(3)
    ops = numbered([op(f"p{i}", "write", rng.random(), 1000 + rng.random(), {}, value=i) for i in range(40)]
                   + [op("r", "read", 2000, 2001, {"value": -1})])
    verdict = check_part(ops, Register(), max_steps=5_000)
    assert verdict.ok is None and "gave up" in verdict.explain()


# --------------------------------------------------------------------------- locks

KEY = "k"


def good_lock_history() -> list[Op]:
    """Two owners take turns: a release, an expiry, renewals, reads, a denied try, a stale
    token refused, and an acquire of unknown outcome that took effect."""
    return numbered([
        op("a", "acquire", 0, 5, granted(10), key=KEY, owner="a", ttl_ms=1000),
        op("b", "acquire", 6, 9, {"type": "denied", "holder": "a"}, key=KEY, owner="b", ttl_ms=1000),
        op("a", "renew", 400, 405, {"type": "renewed", "token": 10}, key=KEY, owner="a", token=10, ttl_ms=1000),
        op("c", "read", 410, 412, {"type": "info", "holder": "a", "token": 10}, key=KEY),
        op("a", "release", 500, 510, {"type": "released"}, key=KEY, owner="a", token=10),
        op("b", "acquire", 505, 520, granted(14), key=KEY, owner="b", ttl_ms=300),  # overlaps the release
        op("a", "release", 600, 601, {"type": "not_held", "reason": "not_owner"}, key=KEY, owner="a", token=10),
        # b never renews: its lease (lower bound 505 + 300) expires, then a takes it again
        op("a", "acquire", 900, 905, granted(20), key=KEY, owner="a", ttl_ms=1000),
        op("b", "renew", 910, 915, {"type": "not_held", "reason": "not_owner"}, key=KEY, owner="b", token=14,
           ttl_ms=300),
        op("a", "release", 950, 960, {"type": "released"}, key=KEY, owner="a", token=20),
        op("c", "acquire", 970, None, None, key=KEY, owner="c", ttl_ms=5000),          # timed out...
        op("b", "read", 2000, 2001, {"type": "info", "holder": "c", "token": 31}, key=KEY),  # ...but took effect
        op("b", "acquire", 2002, 2003, {"type": "denied", "holder": "c"}, key=KEY, owner="b", ttl_ms=300),
    ])


def test_linearizability_checker_accepts_a_known_good_lock_history():
    verdicts = check_linearizable(good_lock_history())
    assert [v.ok for v in verdicts] == [True], [v.explain() for v in verdicts]
    assert check_invariants(good_lock_history()) == []


def test_linearizability_checker_finds_a_grant_while_the_lease_is_live():
    """The planted bug "grant without checking expiry": b gets the key 200 ms into a's 1 s lease."""
    bad = numbered([
        op("a", "acquire", 0, 5, granted(10), key=KEY, owner="a", ttl_ms=1000),
        op("b", "acquire", 200, 210, granted(12), key=KEY, owner="b", ttl_ms=1000),
        op("a", "renew", 300, 305, {"type": "renewed", "token": 10}, key=KEY, owner="a", token=10, ttl_ms=1000),
    ])
    [verdict] = check_linearizable(bad)
    assert verdict.ok is False
    assert any(o.id == 1 for o in verdict.stuck_at), verdict.explain()
    problems = check_invariants(bad)
    assert any("two holders at once" in p for p in problems), problems


def test_linearizability_checker_finds_lost_release_and_stale_read():
    lost_release = numbered([
        op("a", "acquire", 0, 5, granted(10), key=KEY, owner="a", ttl_ms=60_000),
        op("a", "release", 10, 15, {"type": "released"}, key=KEY, owner="a", token=10),
        op("b", "acquire", 20, 25, {"type": "denied", "holder": "a"}, key=KEY, owner="b", ttl_ms=1000),
    ])
    assert check_linearizable(lost_release)[0].ok is False
    stale_read = numbered([
        op("a", "acquire", 0, 5, granted(10), key=KEY, owner="a", ttl_ms=60_000),
        op("a", "release", 10, 15, {"type": "released"}, key=KEY, owner="a", token=10),
        op("b", "acquire", 20, 25, granted(12), key=KEY, owner="b", ttl_ms=60_000),
        op("c", "read", 30, 35, {"type": "info", "holder": "a", "token": 10}, key=KEY),
    ])
    assert check_linearizable(stale_read)[0].ok is False


def test_invariants_find_tokens_going_backwards_and_a_token_on_two_keys():
    backwards = numbered([
        op("a", "acquire", 0, 5, granted(20), key=KEY, owner="a", ttl_ms=10),
        op("b", "acquire", 100, 105, granted(15), key=KEY, owner="b", ttl_ms=10),
    ])
    assert any("backwards" in p for p in check_invariants(backwards))
    assert check_linearizable(backwards)[0].ok is False
    shared = numbered([
        op("a", "acquire", 0, 5, granted(20), key="x", owner="a", ttl_ms=10),
        op("b", "acquire", 100, 105, granted(20), key="y", owner="b", ttl_ms=10),
    ])
    assert any("two keys" in p for p in check_invariants(shared))


def test_a_history_survives_a_dump_and_load(tmp_path):
    history = History()
    history.ops = good_lock_history()
    history.dump(tmp_path / "h.jsonl")
    again = History.load(tmp_path / "h.jsonl").ops
    assert again == history.ops
    assert [v.ok for v in check_linearizable(again)] == [True]


def test_lock_model_follows_what_the_lock_table_really_does():
    """Two histories from real runs that a first, too strict model refused: a read finds a
    lapsed lease free and the holder's next renewal is answered "expired" (the lease is still in
    the table until a command removes it); a holder's re-acquire with a shorter TTL shortens its
    lease, so another owner may get the key before the first TTL would have run out."""
    lapsed = numbered([
        op("a", "acquire", 0, 5, granted(10), key=KEY, owner="a", ttl_ms=300),
        op("b", "read", 400, 410, {"type": "free"}, key=KEY),
        op("a", "renew", 420, 425, {"type": "not_held", "reason": "expired"}, key=KEY, owner="a", token=10,
           ttl_ms=300),
    ])
    shortened = numbered([
        op("a", "acquire", 0, 5, granted(10), key=KEY, owner="a", ttl_ms=2000),
        op("a", "acquire", 20, 25, granted(10), key=KEY, owner="a", ttl_ms=300),
        op("b", "acquire", 330, 335, granted(14), key=KEY, owner="b", ttl_ms=300),
    ])
    # a renewal of unknown outcome may have shortened the lease too (slow_link seed 6)
    maybe_shortened = numbered([
        op("a", "acquire", 0, 5, granted(10), key=KEY, owner="a", ttl_ms=2000),
        op("a", "renew", 20, None, None, key=KEY, owner="a", token=10, ttl_ms=300),
        op("b", "acquire", 700, 705, granted(14), key=KEY, owner="b", ttl_ms=300),
    ])
    for history in (lapsed, shortened, maybe_shortened):
        assert [v.ok for v in check_linearizable(history)] == [True]
        assert check_invariants(history) == []
    # ...but not "expired" for an owner whose lease was released, nor a grant inside the short TTL
    assert check_linearizable(numbered([
        op("a", "acquire", 0, 5, granted(10), key=KEY, owner="a", ttl_ms=300),
        op("a", "release", 10, 15, {"type": "released"}, key=KEY, owner="a", token=10),
        op("a", "renew", 420, 425, {"type": "not_held", "reason": "expired"}, key=KEY, owner="a", token=10,
           ttl_ms=300),
    ]))[0].ok is False
    assert check_invariants(numbered(shortened[:2] + [
        op("b", "acquire", 200, 205, granted(14), key=KEY, owner="b", ttl_ms=300)]))


# --------------------------------------------------------------------------- agents (checker ready, workload to come)


def test_agent_checker_finds_a_hung_request_and_out_of_order_delivery():
    from tests.chaos.agentcheck import check_deadlines, check_pair_order

    def request(seq, complete, deadline=1000):
        return op("a", "request", 0, complete, None if complete is None else {"answered_by_seq": seq},
                  sender="a", receiver="b", seq=seq, deadline_ms=deadline)

    good = numbered([request(1, 100), request(2, 1200)])
    assert check_deadlines(good) == [] and check_pair_order({"b": [("a", 1), ("a", 2), ("c", 1)]}) == []
    hung = numbered([request(1, None), request(2, 5000)])
    assert len(check_deadlines(hung)) == 2
    assert check_pair_order({"b": [("a", 2), ("a", 1)]}) and check_pair_order({"b": [("a", 1), ("a", 1)]})


# --------------------------------------------------------------------------- workflows


def test_workflow_checker_accepts_a_good_run_and_finds_stale_completion_lost_tasks_and_order():
    from protocols.workflow_table import DispatchTask, FinishTask
    from tests.chaos.workflowcheck import check_workflows

    submit = op("w", "submit", 0, 5, {"ok": True}, workflow_id="wf", tasks={"a": [], "b": ["a"]})

    def task(attempts, started, finished, worker="w1"):
        return {"state": "completed", "attempts": attempts, "worker": worker, "started_ms": started,
                "finished_ms": finished}

    status = {"state": "completed", "tasks": {"a": task(1, 10, 100), "b": task(1, 100, 200)}}
    ok = {"ok": True}
    commands = [(2, DispatchTask("wf", "a", 1, "w1", 10), ok), (3, FinishTask("wf", "a", 1, True, 100), ok),
                (3, DispatchTask("wf", "b", 1, "w1", 100), ok), (4, FinishTask("wf", "b", 1, True, 200), ok)]
    runs = {("wf", "a", 1, 0): [{"pid": 1, "start": 11, "end": 90}],
            ("wf", "b", 1, 0): [{"pid": 1, "start": 101, "end": 190}]}
    assert check_workflows([submit], {"wf": status}, {"wf": commands}, runs) == []

    # completed by attempt 1 after attempt 2 was dispatched (the planted bug's signature)
    stale = commands[:1] + [(3, DispatchTask("wf", "a", 2, "w2", 50), ok), (4, FinishTask("wf", "a", 1, True, 100), ok)]
    stale_status = {"state": "completed", "tasks": {"a": task(2, 50, 100, "w2"), "b": status["tasks"]["b"]}}
    problems = check_workflows([submit], {"wf": stale_status}, {"wf": stale + commands[2:]}, runs)
    assert any("by attempt 1 (term 0) while the current attempt was 2 (term 0)" in p for p in problems), problems
    # completed by the run of a lost dispatch of the same attempt number (an earlier term's)
    reused = commands[:1] + [(3, DispatchTask("wf", "a", 1, "w1", 50, 2), ok), (4, FinishTask("wf", "a", 1, True, 100), ok)]
    problems = check_workflows([submit], {"wf": status}, {"wf": reused + commands[2:]}, runs)
    assert any("by attempt 1 (term 0) while the current attempt was 1 (term 2)" in p for p in problems), problems

    # acknowledged, then unknown to the cluster; a task that never ran; a dependent run too early
    assert check_workflows([submit], {"wf": None}, {}, {})[0].endswith("unknown to the cluster")
    assert any("no run had ended" in p for p in check_workflows([submit], {"wf": status}, {"wf": commands},
                                                              {("wf", "b", 1, 0): runs[("wf", "b", 1, 0)]}))
    early = {**runs, ("wf", "b", 1, 0): [{"pid": 2, "start": 50, "end": 190}]}
    assert any("before a's completing run ended" in p
               for p in check_workflows([submit], {"wf": status}, {"wf": commands}, early))
