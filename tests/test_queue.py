"""The priority queue: order, FIFO, aging, retry penalty, remove/reprioritize, batches,
snapshots, and properties over random operation sequences."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import wire
from protocols.queue import DEFAULT_AGING_MS_PER_POINT, RETRY_PENALTY, PriorityTaskQueue, QueueStats


def drain(queue: PriorityTaskQueue, now_ms: int = 0) -> list:
    out = []
    while len(queue):
        out.append(queue.dequeue(now_ms))
    return out


def test_priority_order_then_fifo():
    queue = PriorityTaskQueue()
    queue.enqueue("low", "low", 0)
    queue.enqueue("m1", "medium", 0)
    queue.enqueue("urgent", "urgent", 0)
    queue.enqueue("m2", 500, 0)
    queue.enqueue("high", "HIGH", 0)
    queue.enqueue("custom", 600, 0)
    assert queue.peek(0) == "urgent"
    assert len(queue) == 6
    assert drain(queue) == ["urgent", "high", "custom", "m1", "m2", "low"]
    assert queue.dequeue(0) is None and queue.peek(0) is None


def test_fifo_within_a_priority_even_when_enqueued_at_the_same_ms():
    queue = PriorityTaskQueue()
    for index in range(50):
        queue.enqueue(f"t{index}", "medium", 7)
    assert drain(queue) == [f"t{index}" for index in range(50)]


def test_aging_lets_a_waiting_low_task_overtake_a_fresh_high_one():
    # The documented default: 10 points a second, so 500 points of difference take 50 s.
    assert DEFAULT_AGING_MS_PER_POINT == 100
    queue = PriorityTaskQueue()
    queue.enqueue("old-low", "low", 0)
    queue.enqueue("fresh-high", "high", 49_000)
    assert queue.peek(49_000) == "fresh-high"
    queue = PriorityTaskQueue()
    queue.enqueue("old-low", "low", 0)
    queue.enqueue("fresh-high", "high", 60_000)
    assert queue.peek(60_000) == "old-low"
    queue.enqueue("fresh-urgent", "urgent", 60_000)
    assert queue.peek(60_000) == "fresh-urgent"  # 250 + 600 < 1000
    queue = PriorityTaskQueue()
    queue.enqueue("old-low", "low", 0)
    queue.enqueue("fresh-urgent", "urgent", 80_000)
    assert queue.peek(80_000) == "old-low"  # 250 + 800 > 1000


def test_aging_speed_is_configurable():
    queue = PriorityTaskQueue(aging_ms_per_point=1000)  # 1 point a second
    queue.enqueue("old-low", "low", 0)
    queue.enqueue("fresh-high", "high", 60_000)
    assert queue.peek(60_000) == "fresh-high"


def test_retries_lower_the_score():
    queue = PriorityTaskQueue()
    queue.enqueue("retried", "medium", 0, retries=1)
    queue.enqueue("fresh", "medium", 1000)  # 1 s younger = 10 points less aging; retry costs 50
    assert drain(queue) == ["fresh", "retried"]
    queue.enqueue("retried", "medium", 0, retries=1)
    queue.enqueue("fresh", "medium", 6000)  # 60 points younger outweighs 50
    assert drain(queue) == ["retried", "fresh"]
    entry = queue.enqueue("x", "high", 0, retries=2)
    assert queue.effective_score(entry, 1000) == 750 + 10 - 2 * RETRY_PENALTY


def test_remove_and_reprioritize():
    queue = PriorityTaskQueue()
    for name in ("a", "b", "c", "d"):
        queue.enqueue(name, "medium", 0)
    assert queue.remove("b")
    assert not queue.remove("b")
    assert "b" not in queue and len(queue) == 3
    assert queue.reprioritize("d", "urgent", 5)
    assert not queue.reprioritize("missing", "urgent", 5)
    assert queue.reprioritize("d", "low", 5)
    assert queue.reprioritize("d", "urgent", 5)  # several changes leave one live entry
    assert queue.reprioritize("d", "urgent", 5)  # a no-op change is fine too
    assert drain(queue) == ["d", "a", "c"]


def test_reprioritize_keeps_fifo_place_among_equals():
    queue = PriorityTaskQueue()
    queue.enqueue("first", "low", 0)
    queue.enqueue("second", "medium", 0)
    queue.reprioritize("first", "medium", 10)
    assert drain(queue) == ["first", "second"]


def test_enqueue_of_a_queued_key_replaces_it():
    queue = PriorityTaskQueue()
    queue.enqueue("a", "medium", 0)
    queue.enqueue("b", "medium", 0)
    queue.enqueue("a", "medium", 5, retries=1)
    assert len(queue) == 2
    assert drain(queue) == ["b", "a"]


def test_items_with_task_key_or_explicit_key():
    class Task:
        def __init__(self, task_key):
            self.task_key = task_key

    queue = PriorityTaskQueue()
    task = Task("wf/a")
    queue.enqueue(task, "high", 0)
    queue.enqueue({"payload": 1}, "low", 0, key="wf/b")
    assert "wf/a" in queue and "wf/b" in queue
    assert queue.dequeue(0) is task
    assert queue.get("wf/b").item == {"payload": 1}


def test_dequeue_batch_skips_and_keeps_rejected_items_in_place():
    queue = PriorityTaskQueue()
    for name, priority in (("gpu1", "urgent"), ("cpu1", "high"), ("gpu2", "high"), ("cpu2", "medium"), ("cpu3", "low")):
        queue.enqueue(name, priority, 0)
    seen = []

    def accept(item):
        seen.append(item)
        return item.startswith("cpu")

    assert queue.dequeue_batch(2, 0, accept) == ["cpu1", "cpu2"]
    assert seen == ["gpu1", "cpu1", "gpu2", "cpu2"]
    assert drain(queue) == ["gpu1", "gpu2", "cpu3"]


def test_dequeue_batch_limits_and_scan_bound():
    queue = PriorityTaskQueue()
    for index in range(10):
        queue.enqueue(f"t{index}", "medium", 0)
    assert queue.dequeue_batch(3, 0) == ["t0", "t1", "t2"]
    assert queue.dequeue_batch(5, 0, accept=lambda item: False, max_scanned=4) == []
    assert queue.dequeue_batch(5, 0, accept=lambda item: item == "t9", max_scanned=4) == []
    assert queue.dequeue_batch(5, 0, accept=lambda item: item == "t9") == ["t9"]
    assert len(queue) == 6
    assert queue.dequeue_batch(0, 0) == []


def test_dequeue_batch_drops_unwanted_items_without_counting_them():
    queue = PriorityTaskQueue()
    for index in range(10):
        queue.enqueue(f"t{index}", "medium", 0)
    stale = {f"t{index}" for index in range(7)}  # e.g. tasks that are no longer ready
    assert queue.dequeue_batch(2, 0, max_scanned=2, drop=lambda item: item in stale) == ["t7", "t8"]
    assert drain(queue) == ["t9"]  # the dropped ones are gone for good


def test_stats_counts_per_priority_and_oldest_wait():
    queue = PriorityTaskQueue()
    assert queue.stats(0) == QueueStats(total=0, by_priority={"urgent": 0, "high": 0, "medium": 0, "low": 0})
    queue.enqueue("a", "high", 100)
    queue.enqueue("b", "high", 50)
    queue.enqueue("c", 600, 300)
    stats = queue.stats(1000)
    assert stats.total == 3
    assert stats.by_priority == {"urgent": 0, "high": 2, "medium": 0, "low": 0, "600": 1}
    assert (stats.oldest_wait_ms, stats.oldest_key) == (950, "b")
    assert wire.decode(wire.encode(stats)) == stats


def test_snapshot_round_trip_keeps_order():
    queue = PriorityTaskQueue(aging_ms_per_point=50)
    for index in range(30):
        queue.enqueue(f"t{index}", [250, 500, 750, 1000][index % 4], index * 10, retries=index % 3)
    queue.remove("t5")
    queue.reprioritize("t6", "urgent", 400)
    snapshot = queue.to_snapshot()
    restored = PriorityTaskQueue.from_snapshot(wire.decode(wire.encode(snapshot)))
    assert restored.to_snapshot() == snapshot
    restored.enqueue("late", "high", 500)
    queue.enqueue("late", "high", 500)
    assert drain(restored) == drain(queue)


def test_entries_lists_pop_order():
    queue = PriorityTaskQueue()
    queue.enqueue("a", "low", 0)
    queue.enqueue("b", "high", 0)
    queue.reprioritize("a", "urgent", 0)
    assert [entry.key for entry in queue.entries()] == ["a", "b"]


def test_ten_thousand_enqueues_and_dequeues_are_fast():
    # Not a benchmark (bench/ measures); a guard against an accidental O(n) per pop.
    queue = PriorityTaskQueue()
    started = time.perf_counter()
    for index in range(10_000):
        queue.enqueue(f"t{index}", (250, 500, 750, 1000)[index % 4], index)
    out = [queue.dequeue(20_000) for _ in range(10_000)]
    elapsed_s = time.perf_counter() - started
    assert len(out) == 10_000 and len(queue) == 0
    assert elapsed_s < 1.0  # typically ~30 ms; loose bound for slow CI machines


# --------------------------------------------------------------------------- properties

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("enqueue"),
            st.integers(0, 30),  # key
            st.sampled_from([250, 500, 750, 1000, 0, 600, -40]),
            st.integers(0, 5_000),  # ms to advance
            st.integers(0, 3),  # retries
        ),
        st.tuples(st.just("dequeue"), st.integers(0, 5_000)),
        st.tuples(st.just("remove"), st.integers(0, 30)),
        st.tuples(st.just("reprioritize"), st.integers(0, 30), st.sampled_from([250, 500, 750, 1000])),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(operations, st.sampled_from([1, 7, 100, 1000]))
def test_each_pop_has_the_best_effective_score_at_pop_time(ops, aging_ms_per_point):
    queue = PriorityTaskQueue(aging_ms_per_point)
    model: dict[str, tuple[int, int, int, int]] = {}  # key -> (base, enqueued_ms, retries, seq)
    now_ms, seq = 0, 0

    def score(entry, at_ms):
        base, enqueued_ms, retries, _ = entry
        return base + (at_ms - enqueued_ms) / aging_ms_per_point - RETRY_PENALTY * retries

    for op in ops:
        if op[0] == "enqueue":
            _, key, base, advance_ms, retries = op
            now_ms += advance_ms
            queue.enqueue(f"k{key}", base, now_ms, retries=retries)
            model[f"k{key}"] = (base, now_ms, retries, seq)
            seq += 1
        elif op[0] == "dequeue":
            now_ms += op[1]
            popped = queue.dequeue(now_ms)
            if not model:
                assert popped is None
                continue
            # Best score first; among equal scores (compared exactly, in integers), the
            # earliest enqueue.
            best = min(
                model,
                key=lambda key: (
                    -(model[key][0] * aging_ms_per_point - model[key][1] - RETRY_PENALTY * model[key][2] * aging_ms_per_point),
                    model[key][3],
                ),
            )
            assert popped == best
            assert all(score(model[best], now_ms) >= score(entry, now_ms) - 1e-9 for entry in model.values())
            del model[best]
        elif op[0] == "remove":
            assert queue.remove(f"k{op[1]}") == (f"k{op[1]}" in model)
            model.pop(f"k{op[1]}", None)
        else:
            key = f"k{op[1]}"
            assert queue.reprioritize(key, op[2], now_ms) == (key in model)
            if key in model:
                _, enqueued_ms, retries, entry_seq = model[key]
                model[key] = (op[2], enqueued_ms, retries, entry_seq)
        assert len(queue) == len(model)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([250, 500, 750, 1000]), min_size=1, max_size=60), st.integers(0, 50))
def test_fifo_within_equal_priority(priorities, step_ms):
    queue = PriorityTaskQueue()
    for index, priority in enumerate(priorities):
        queue.enqueue(f"t{index}", priority, index * step_ms)
    popped = drain(queue, now_ms=len(priorities) * step_ms)
    for priority in set(priorities):
        same = [int(name[1:]) for name in popped if priorities[int(name[1:])] == priority]
        assert same == sorted(same)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 20))
def test_a_low_task_is_never_starved_by_a_stream_of_fresh_high_tasks(per_pop, aging_ms_per_point):
    # New high tasks arrive faster than they are popped (`per_pop` per pop, one per ms), so
    # the backlog grows for ever; the old low task still comes out: it ties any high task
    # enqueued 500 points of aging after it, so it pops once those before that point are gone,
    # after at most 500 * aging_ms_per_point pops.
    queue = PriorityTaskQueue(aging_ms_per_point)
    queue.enqueue("low", "low", 0)
    now_ms = 0
    bound = 500 * aging_ms_per_point + 1
    for pops in range(1, bound + 1):
        for _ in range(per_pop):
            now_ms += 1
            queue.enqueue(f"h{now_ms}", "high", now_ms)
        if queue.dequeue(now_ms) == "low":
            break
    else:
        raise AssertionError("the low task starved")
    assert pops <= bound
