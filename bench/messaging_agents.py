"""The agents bench/messaging.py runs on AgentFlow's side (issue 11's agent API), and the host
process that runs several of them in one node.

    agentflow agent run bench.messaging_agents:Sleeper --agent-id victim --master-url URL
    python bench/messaging_agents.py MASTER_URL      # echo, counter and sub0..sub7 in one node
Requests every agent answers at once: PING (is it up?), and COUNT to a counter or a subscriber
(its count).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentflow import AgentActor, MessageType  # noqa: E402

COUNT = "count?"
PING = "ping?"
SUBSCRIBERS = 8
BURST_MAILBOX_LIMIT = 1_000_000


class Echo(AgentActor):
    def on_message(self, message):
        return message.content


class Counter(AgentActor):
    """Counts the messages it is sent; a COUNT request answers the count."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.count = 0

    def on_message(self, message):
        if message.content == COUNT or message.content == PING:
            return self.count
        self.count += 1
        return None


class Relay(Counter):
    """The caller's own agent: a request {"relay": N} times N sequential requests from inside this
    agent to the echo agent (agent to agent) and answers their microseconds."""

    def on_message(self, message):
        if isinstance(message.content, dict) and "relay" in message.content:
            samples = []
            for _ in range(message.content["relay"]):
                started = time.perf_counter()
                self.comm.request("echo", message.content["payload"], timeout_ms=5000)
                samples.append((time.perf_counter() - started) * 1e6)
            return samples
        return super().on_message(message)


class Sleeper(AgentActor):
    """Holds every request for a minute: the call in flight when its host is killed."""

    def on_message(self, message):
        if message.content != PING:
            time.sleep(60)
        return message.content


def serve(master_url: str) -> None:
    """One host process (a node of its own) with the echo, counter and 8 subscriber agents (counters
    that receive every NOTIFICATION broadcast), as AutoGen's second worker runtime hosts them;
    "ready" on stdout once all are spawned (and so registered), until stdin closes. The counters'
    mailboxes hold a whole pipelined burst, as the peers' unbounded queues do."""
    from agentflow import Node

    node = Node("bench-agents", master_urls=master_url).start()
    node.spawn(Echo, agent_id="echo")
    node.spawn(Counter, agent_id="counter", mailbox_limit=BURST_MAILBOX_LIMIT)
    for i in range(SUBSCRIBERS):
        node.spawn(Counter, agent_id=f"sub{i}", subscriptions=[MessageType.NOTIFICATION],
                   mailbox_limit=BURST_MAILBOX_LIMIT)
    print("ready", flush=True)
    sys.stdin.read()
    node.stop()


if __name__ == "__main__":
    serve(sys.argv[1])
