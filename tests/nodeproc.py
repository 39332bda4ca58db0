"""A node in its own OS process, for integration tests and benchmarks.

    python -m tests.nodeproc NODE_ID [PORT]

Hosts ``echo`` (pykka; ``{"sleep_s": S}`` is answered after S seconds), ``pecho`` (pinned
echo), ``sink`` (counts tells and checks their order) and ``stats`` (answers the node's counters). Prints its endpoint on one line, then serves until
its standard input closes, so it never outlives the test that started it.
"""

from __future__ import annotations

import sys
import time

from runtime.actor import Actor
from runtime.node import Node


class EchoActor(Actor):
    def receive(self, message):
        if message == "boom":
            raise ValueError("boom")
        if isinstance(message, dict) and "sleep_s" in message:
            time.sleep(message["sleep_s"])
        return message


class SinkActor(Actor):
    """Counts told integers and whether each was the previous one plus one."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.last = None
        self.in_order = True

    def receive(self, message):
        if message == "report":
            return {"count": self.count, "in_order": self.in_order, "last": self.last}
        if message == "reset":
            self.count, self.last, self.in_order = 0, None, True
            return True
        if self.last is not None and message != self.last + 1:
            self.in_order = False
        self.last = message
        self.count += 1
        return None


class StatsActor(Actor):
    def receive(self, message):
        return self.node.stats()


def main() -> None:
    node_id = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    node = Node(node_id, port=port).start()
    node.spawn(EchoActor, name="echo")
    node.spawn(EchoActor, name="pecho", pinned=True)
    node.spawn(SinkActor, name="sink")
    node.spawn(SinkActor, name="psink", pinned=True)
    node.spawn(StatsActor, name="stats")
    print(node.endpoint, flush=True)
    try:
        sys.stdin.read()  # returns when the parent closes our stdin or dies
    finally:
        node.stop()


if __name__ == "__main__":
    main()
