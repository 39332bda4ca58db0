"""Which finished workflows the leader forgets: the retention policy of the workflow table.

Rules:

* A finished workflow is kept while it is among the ``retain_workflows`` most recently finished
  and finished less than ``retain_ms`` ago; the leader proposes ``ForgetWorkflow`` for the
  others, oldest first (the table lists them in the order they finished), at most
  ``MAX_FORGETS_PER_CALL`` at a time so that no entry grows big. Every master applies the same
  commands, so every master forgets the same workflows; a forgotten one leaves a tombstone.
* Time is the table's: the scheduler stamps commands with its machine's monotonic clock, moved
  ahead to the table's latest time when a new leader's runs behind, so the timeline never goes
  back. On one machine ages are exact; a new leader on a machine whose clock is ahead makes
  finished workflows look older by the difference (forgotten that much earlier).
* Defaults: 1,000 workflows and one day, whichever is smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RETAIN_WORKFLOWS = 1000
DEFAULT_RETAIN_MS = 24 * 3600 * 1000
MAX_FORGETS_PER_CALL = 256


@dataclass(slots=True)
class RetentionPolicy:
    retain_workflows: int = DEFAULT_RETAIN_WORKFLOWS
    retain_ms: int = DEFAULT_RETAIN_MS

    def __post_init__(self) -> None:
        if self.retain_workflows < 0 or self.retain_ms < 0:
            raise ValueError("retention limits must not be negative")

    def to_forget(self, finished: dict[str, int], now_ms: int, forgetting: set[str] | frozenset = frozenset()
                  ) -> list[str]:
        """The workflows to forget now, oldest first, among ``finished`` (id -> finished_ms, in
        the order they finished); ``forgetting`` are already on their way out."""
        excess = len(finished) - self.retain_workflows
        chosen: list[str] = []
        for workflow_id, finished_ms in finished.items():
            if excess <= 0 and finished_ms + self.retain_ms > now_ms:
                break  # this one and every later one are young enough, and few enough
            excess -= 1
            if workflow_id not in forgetting:
                chosen.append(workflow_id)
                if len(chosen) == MAX_FORGETS_PER_CALL:
                    break
        return chosen
