"""The lock checkers: a sequential model of leased locks with fencing tokens for the
linearizability checker, and the two invariants users rely on, checked directly.

Lock operations in a history (``Op.kind``): ``acquire`` (args key, owner, ttl_ms), ``release``
(key, owner, token), ``renew`` (key, owner, token, ttl_ms), ``read`` (key). Results:
``{"type": "granted", "token"}``, ``{"type": "denied", "holder"}``, ``{"type": "released"}``,
``{"type": "renewed", "token"}``, ``{"type": "not_held", "reason"}`` (free, not_owner,
stale_token, expired), ``{"type": "info", "holder", "token"}`` or ``{"type": "free"}`` (reads).

Leases and time. The leader stamps a command with its monotonic clock when it receives it, so
the stamp lies inside the call's [invoke, complete] window, on the same clock the history uses.
A lease granted or renewed by a call invoked at ``t`` with ``ttl`` cannot end before
``t + ttl`` (a new leader only ever extends leases), and it may end any time after: expiry
is lazy and leader changes extend it. So in the model a held lease carries the earliest time
it may end, ``lower_bound_ms``, and an operation that completes after that may find the key
free (the model branches: held, or expired). This is sound (it never flags a correct run); it
accepts some histories a stricter clock model would refuse.

Invariants (``check_invariants``): tokens strictly increase per key in real time and no token
is granted on two keys; and never two holders at once, as clients see it: a holder counts on
its lease from its grant's completion until it starts releasing, or until ``ttl`` after the
invocation of its last successful grant or renewal, whichever comes first; the next grant's
lease (a higher token on the same key) must not begin inside that window.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Hashable, Iterable

from tests.chaos.history import Op
from tests.chaos.linearizability import Verdict, check

LOCK_KINDS = ("acquire", "release", "renew", "read")
MAX_REPORTED = 5  # overlaps listed per key; the rest are counted
SLACK_MS = 2  # the leader stamps whole milliseconds (floor): up to 1 ms before our float clock

FREE = "free"
HELD = "held"


def _lower_bound(op: Op) -> float:
    return op.invoke_ms + op.args["ttl_ms"] - SLACK_MS


def _max_token(state: tuple) -> int:
    return state[1] if state[0] == FREE else state[4]


def _time_of(op: Op) -> float:
    return float("inf") if op.pending else op.complete_ms


class LockModel:
    """One key's lock. A state is ``("free", max_token, lapsed_holder)`` or
    ``("held", holder, token, lower_bound_ms, max_token)``. ``lapsed_holder`` is the owner whose
    lease lapsed without a command removing it yet: its own next release or renew is answered
    ``expired`` (the leader's periodic ExpireLocks, which clients never see, may remove it first:
    then ``free``). A token is None when it came in an answer we never saw (an acquire of
    unknown outcome)."""

    def init(self) -> Hashable:
        return (FREE, 0, None)

    def partition(self, ops: list[Op]) -> dict[Any, list[Op]]:
        parts: dict[Any, list[Op]] = defaultdict(list)
        for op in ops:
            if op.kind in LOCK_KINDS:
                parts[op.args["key"]].append(op)
        return parts

    def step(self, state: Hashable, op: Op) -> Iterable[Hashable]:
        # Before ``op`` takes effect, a lease past its lower bound may have lapsed.
        candidates = [state]
        if state[0] == HELD and _time_of(op) >= state[3]:
            candidates.append((FREE, state[4], state[1]))
        results = [op.result] if not op.pending else self._possible_results(op)
        return [after for before in candidates for result in results
                if (after := self._apply(before, op, result)) is not None]

    @staticmethod
    def _possible_results(op: Op) -> list[dict]:
        """What an operation of unknown outcome may have answered (had it taken effect)."""
        if op.kind == "acquire":
            return [{"type": "granted", "token": None}, {"type": "denied", "holder": None}]
        if op.kind == "release":
            return [{"type": "released"}, {"type": "not_held", "reason": None}]
        if op.kind == "renew":
            return [{"type": "renewed", "token": None}, {"type": "not_held", "reason": None}]
        return [{"type": "any"}]

    def _apply(self, state: tuple, op: Op, result: dict) -> tuple | None:
        owner = op.args.get("owner")
        kind, answer = op.kind, result.get("type")
        held = state[0] == HELD
        if kind == "read":
            if answer == "any":
                return state
            if answer == "free":
                return None if held else state
            if not held or state[1] != result["holder"] or not _same_token(state[2], result["token"]):
                return None
            return (HELD, state[1], result["token"], state[3], max(state[4], result["token"]))
        if kind == "acquire":
            token = result.get("token")
            if answer == "granted":
                if not held:
                    if token is not None and token <= state[1]:
                        return None  # fencing tokens must grow
                    return (HELD, owner, token, _lower_bound(op), state[1] if token is None else token)
                if state[1] != owner or not _same_token(state[2], token):
                    return None  # granted while another holds it
                # The holder's re-acquire is a renewal: the lease ends ttl after it (sooner, maybe).
                return (HELD, owner, state[2] if token is None else token, _lower_bound(op), state[4])
            if answer == "denied":
                if not held or state[1] == owner:
                    return None
                return state if result.get("holder") in (None, state[1]) else None
            return None
        # release and renew: the holder's own calls, checked against the holder and its token
        holds = held and state[1] == owner and _same_token(state[2], op.args.get("token"))
        if answer in ("released", "renewed"):
            if not holds or not _same_token(state[2], result.get("token")):
                return None
            if answer == "released":
                return (FREE, state[4], None)
            return (HELD, owner, state[2] if result.get("token") is None else result["token"], _lower_bound(op),
                    state[4])
        if answer == "not_held":
            reason = result.get("reason")
            if reason is None:  # unknown outcome: refused, for whatever reason
                return state
            if reason in ("expired", "free"):
                if held or (reason == "expired" and state[2] != owner):
                    return None
                return (FREE, state[1], None) if state[2] == owner else state
            if reason == "not_owner":
                return state if held and state[1] != owner else None
            if reason == "stale_token":
                return state if held and state[1] == owner and not holds else None
            return None
        return None


def _same_token(known: int | None, seen: int | None) -> bool:
    return known is None or seen is None or known == seen


def check_linearizable(ops: list[Op], max_steps: int = 2_000_000) -> list[Verdict]:
    return check([op for op in ops if op.kind in LOCK_KINDS], LockModel(), max_steps)


def check_invariants(ops: list[Op]) -> list[str]:
    """Violations of "tokens strictly increase per key" and "never two holders at once"."""
    problems: list[str] = []
    grants: dict[str, dict[int, list[Op]]] = defaultdict(lambda: defaultdict(list))  # key -> token -> ops
    token_keys: dict[int, str] = {}
    for op in ops:
        if op.kind == "acquire" and not op.pending and op.result["type"] == "granted":
            key, token = op.args["key"], op.result["token"]
            grants[key][token].append(op)
            if token_keys.setdefault(token, key) != key:
                problems.append(f"token {token} granted on two keys: {token_keys[token]!r} and {key!r}")
    for key, by_token in grants.items():
        for token, ops_of in by_token.items():
            owners = {op.args["owner"] for op in ops_of}
            if len(owners) > 1:
                problems.append(f"{key!r}: token {token} granted to {sorted(owners)}")
        tokens = sorted(by_token)
        for lower, higher in zip(tokens, tokens[1:]):
            first_high = min(op.complete_ms for op in by_token[higher])
            if first_high < min(op.invoke_ms for op in by_token[lower]):
                problems.append(f"{key!r}: token {higher} granted (done at {first_high:.0f}) before token "
                                f"{lower} was asked for: tokens went backwards")
        problems += _overlapping_holders(key, by_token, ops)
    return problems


def _overlapping_holders(key: str, by_token: dict[int, list[Op]], ops: list[Op]) -> list[str]:
    """Windows in which two owners each had reason to believe they held ``key``. A grant or
    renewal sets the lease to end TTL after its invocation (maybe sooner than before); one of
    unknown outcome may have done so too, so the holder counts on no more than that; starting a
    release ends the holder's claim."""
    windows = []
    for token, grant_ops in sorted(by_token.items()):
        owner = grant_ops[0].args["owner"]
        start, asked = min(op.complete_ms for op in grant_ops), min(op.invoke_ms for op in grant_ops)
        end = None
        for op in sorted((op for op in ops if op.args.get("key") == key and op.args.get("owner") == owner
                          and op.invoke_ms >= asked), key=lambda op: op.invoke_ms):
            lease_end = op.invoke_ms + op.args.get("ttl_ms", 0) - SLACK_MS
            confirmed = not op.pending and op.result.get("token") == token \
                and op.result["type"] in ("granted", "renewed")
            if confirmed:
                end = lease_end
            elif end is not None and op.pending and op.kind in ("acquire", "renew"):
                end = min(end, lease_end)
            elif end is not None and op.kind == "release" and op.args.get("token") in (token, None):
                end = min(end, op.invoke_ms)
        windows.append((token, owner, start, end if end is not None else start))
    problems = []
    for position, (token_a, owner_a, _, end_a) in enumerate(windows):
        for token_b, owner_b, start_b, _ in windows[position + 1:]:
            if start_b < end_a and owner_a != owner_b:
                problems.append(f"{key!r}: two holders at once: {owner_a} (token {token_a}) counted on it until "
                                f"{end_a:.0f} ms, {owner_b} (token {token_b}) held it from {start_b:.0f} ms")
    if len(problems) > MAX_REPORTED:
        problems[MAX_REPORTED:] = [f"{key!r}: ... and {len(problems) - MAX_REPORTED} more overlaps"]
    return problems
