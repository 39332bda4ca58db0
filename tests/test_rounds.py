"""The queue's and the registry's side of a dispatch round (protocols/rounds.py)."""

from __future__ import annotations

from protocols.registry import TaskRequirements, WorkerInfo, WorkerResources
from protocols.rounds import (Candidate, Queued, QueueDepthBound, QueueRequest, QueueService, RegistryRequest,
    RegistryService)

NEEDS = TaskRequirements()


def queued(key: str, priority: int = 500, now_ms: int = 0, retries: int = 0) -> Queued:
    return Queued(Candidate(key, NEEDS), priority, now_ms, retries)


def keys(candidates) -> list[str]:
    return [candidate.key for candidate in candidates]


def test_a_loan_goes_back_in_its_place_except_what_left():
    service = QueueService()
    service.handle(QueueRequest(enqueue=[queued("a"), queued("b"), queued("c"), queued("d", priority=100)]))
    reply = service.handle(QueueRequest(take_round=1, take_count=3))
    assert keys(reply.candidates) == ["a", "b", "c"] and reply.depth == 1
    service.handle(QueueRequest(enqueue=[queued("e")]))  # queued while the loan is out: behind a, c
    service.handle(QueueRequest(settle_round=1, settle_return=["a", "c"]))
    reply = service.handle(QueueRequest(take_round=2, take_count=10))
    assert keys(reply.candidates) == ["a", "c", "e", "d"]


def test_transient_candidates_merge_in_queue_order_and_vanish_unless_taken():
    service = QueueService()
    service.handle(QueueRequest(enqueue=[queued("queued-high", 750), queued("queued-low", 250)]))
    reply = service.handle(QueueRequest(take_round=1, take_count=2,
                                        transient=[queued("fresh-urgent", 1000), queued("fresh-medium", 500)]))
    assert keys(reply.candidates) == ["fresh-urgent", "queued-high"]
    assert "fresh-medium" not in service.queue  # not lent: gone (the log makes it ready later)
    service.handle(QueueRequest(settle_round=1, settle_return=["fresh-urgent", "queued-high"]))  # nothing placed
    assert keys(e.item for e in service.queue.entries()) == ["queued-high", "queued-low"]


def test_removing_or_requeueing_a_lent_key_keeps_the_old_entry_from_coming_back():
    service = QueueService()
    service.handle(QueueRequest(enqueue=[queued("a"), queued("b")]))
    service.handle(QueueRequest(take_round=1, take_count=2))
    service.handle(QueueRequest(remove=["a"], enqueue=[queued("b", priority=100, now_ms=5)],
                                settle_round=1, settle_return=["a", "b"]))
    assert [(e.key, e.base_priority) for e in service.queue.entries()] == [("b", 100)]


def test_the_depth_bound_counts_what_requests_add_after_the_one_answered():
    service, bound = QueueService(), QueueDepthBound()

    def send(request):
        bound.sent(request)
        return service.handle(request)

    send(QueueRequest(enqueue=[queued("a"), queued("b")]))
    crossing = send(QueueRequest(take_round=1, take_count=2))  # answered: nothing left behind the loan
    send(QueueRequest(enqueue=[queued("c")]))  # sent before that answer arrives
    bound.replied(crossing)
    assert bound.bound(None) == 1 == len(service.queue)
    send(QueueRequest(settle_round=1, settle_return=["a"], remove=["c"]))
    assert bound.bound(None) == 2 and len(service.queue) == 1  # removes are not counted: an upper bound
    stale = send(QueueRequest(stats_token=1))
    bound.reset()  # a new leader: its next request resets the queue
    send(QueueRequest(reset=True, enqueue=[queued("d")]))
    bound.replied(stale)  # an answer about the queue before the reset tells nothing now
    assert bound.bound(QueueRequest(enqueue=[queued("e")])) == 2  # d, and e in the request being made
    bound.replied(send(QueueRequest(stats_token=2)))
    assert bound.bound(None) == 1 == len(service.queue)


def test_stats_count_what_is_lent():
    service = QueueService()
    service.handle(QueueRequest(enqueue=[queued("a", 750, now_ms=10), queued("b", 250, now_ms=20)]))
    service.handle(QueueRequest(take_round=1, take_count=1))
    reply = service.handle(QueueRequest(stats_token=7, now_ms=100))
    assert reply.stats_token == 7 and reply.stats["total"] == 2 and reply.stats["oldest_task"] == "a"
    assert reply.stats["oldest_wait_ms"] == 90 and reply.stats["by_priority"]["high"] == 1


def info(worker_id: str, slots: int = 2) -> WorkerInfo:
    return WorkerInfo(worker_id, max_concurrent_tasks=slots, resources=WorkerResources(4, 4096, 4096, 0),
                      address=f"tcp://{worker_id}:1")


def test_the_registry_places_in_order_until_no_slot_is_left_and_says_what_is_free():
    service = RegistryService()
    reply = service.handle(RegistryRequest(hellos=[info("w1"), info("w2", slots=1)]))
    assert reply.free_slots == 3
    candidates = [Candidate(key, NEEDS) for key in ("a", "b", "c", "d")]
    reply = service.handle(RegistryRequest(place_round=1, place=candidates))
    assert [(p.key, p.worker_id) for p in reply.placed] == [("a", "w1"), ("b", "w2"), ("c", "w1")]
    assert reply.unplaced == ["d"] and reply.free_slots == 0
    assert service.handle(RegistryRequest(releases=[("w1", "a"), ("", "b"), ("w2", "c")])) is None  # nothing asked
    assert service.handle(RegistryRequest(table_token=1)).free_slots == 2  # c is held by w1, not w2


def test_claims_reserve_what_workers_run_and_fit_checks_explain_refusals():
    service = RegistryService()
    service.handle(RegistryRequest(hellos=[info("w1", slots=1)]))
    reply = service.handle(RegistryRequest(claims={"wf/t": ("w1", NEEDS)}, fit_token=3,
                                           fit_checks=[NEEDS, TaskRequirements(gpu=1)]))
    assert reply.free_slots == 0
    assert reply.fit_token == 3 and reply.fit_problems[0] is None and "GPU" in reply.fit_problems[1]


def test_a_result_cache_keeps_big_results_up_to_its_bound_oldest_out_first():
    from protocols.assignments import LOCAL_INPUT_MIN_BYTES, ResultCache

    cache = ResultCache(max_bytes=3 * LOCAL_INPUT_MIN_BYTES)
    cache.put("wf", "small", "x")  # small results travel in assignments: not kept
    for name in ("a", "b", "c", "d"):
        cache.put("wf", name, "y" * LOCAL_INPUT_MIN_BYTES)
    assert ("wf", "small") not in cache and ("wf", "a") not in cache
    assert [name for name in "bcd" if ("wf", name) in cache] == ["b", "c", "d"]
    assert cache.bytes == 3 * LOCAL_INPUT_MIN_BYTES and cache.get("wf", "d") == "y" * LOCAL_INPUT_MIN_BYTES


def test_capped_tenants_tasks_are_queued_apart_and_lent_within_their_allowance():
    service = QueueService()
    service.handle(QueueRequest(capped=["acme"], enqueue=[queued("acme:w/1", 750), queued("b/1"),
                                                         queued("acme:w/2", 750), queued("acme:w/3", 750)]))
    assert len(service.queue) == 1 and len(service.capped) == 3
    service.handle(QueueRequest(remove=["acme:w/3"], reprioritize=[("acme:w/2", 1000)]))
    stats = service.stats(0)
    assert stats.total == 3 and stats.by_priority["urgent"] == 1 and stats.by_priority["high"] == 1
    reply = service.handle(QueueRequest(take_round=1, take_count=3, allowance={"acme": 1},
                                        transient=[queued("acme:w/4", 1000, now_ms=1)]))
    assert keys(reply.candidates) == ["acme:w/2", "b/1"] and reply.held == 1 and reply.depth == 1
    service.handle(QueueRequest(settle_round=1, settle_return=["acme:w/2"]))  # not placed: back in its queue
    reply = service.handle(QueueRequest(take_round=2, take_count=3, allowance={"acme": 5}))
    assert keys(reply.candidates) == ["acme:w/2", "acme:w/1"] and reply.held == 0
    service.handle(QueueRequest(reset=True, enqueue=[queued("acme:w/5")]))
    assert len(service.queue) == 1 and len(service.capped) == 0  # a new leader sends its caps again
