"""The agent checker, waiting for its workload: what an agents' chaos workload must record, and
the two rules it is checked against. (No such workload is written yet, so no chaos run drives
this today; the rules are tested on hand-made histories.)

An agent workload records, per message, an ``Op`` of kind ``request`` with args ``sender``,
``receiver``, ``seq`` (numbered 1, 2, 3... per sender and receiver) and ``deadline_ms`` (the
monotonic time by which the sender gives up), and as result ``{"answered_by_seq": N}`` for a
reply, ``{"timeout": True}`` when the sender gave up, or None (unknown). The receiving agent
appends ``(sender, seq)`` to its delivery log in the order it received messages.

Rules: no request hangs past its deadline (a call returns, answered or timed out, within
``slack_ms`` of ``deadline_ms``; a pending op is a hang); and per-pair order: each receiver got
each sender's messages in ``seq`` order, never one twice.
"""

from __future__ import annotations

from collections import defaultdict

from tests.chaos.history import Op


def check_deadlines(ops: list[Op], slack_ms: float = 500.0) -> list[str]:
    problems = []
    for op in ops:
        if op.kind != "request":
            continue
        if op.pending:
            problems.append(f"#{op.id} {op.args['sender']} -> {op.args['receiver']} seq {op.args['seq']}: never returned")
        elif op.complete_ms > op.args["deadline_ms"] + slack_ms:
            problems.append(f"#{op.id} {op.args['sender']} -> {op.args['receiver']} seq {op.args['seq']}: returned "
                            f"{op.complete_ms - op.args['deadline_ms']:.0f} ms after its deadline")
    return problems


def check_pair_order(deliveries: dict[str, list[tuple[str, int]]]) -> list[str]:
    """``deliveries``: receiver -> [(sender, seq), ...] in the order the receiver got them."""
    problems = []
    for receiver, log in sorted(deliveries.items()):
        last: dict[str, int] = defaultdict(int)
        for sender, seq in log:
            if seq <= last[sender]:
                problems.append(f"{receiver} got {sender}'s seq {seq} after seq {last[sender]}")
            last[sender] = max(last[sender], seq)
    return problems
