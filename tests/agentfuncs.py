"""Agents the agent tests host (``agentflow agent run tests.agentfuncs:CLASS``)."""

from __future__ import annotations

import time

from agentflow import AgentActor, MessageType


class Echo(AgentActor):
    """Answers a request with its content; ``{"raise": TEXT}`` raises, ``{"sleep_s": S}`` waits."""

    def on_message(self, message):
        content = message.content
        if isinstance(content, dict) and "raise" in content:
            raise ValueError(content["raise"])
        if isinstance(content, dict) and "sleep_s" in content:
            time.sleep(content["sleep_s"])
        return {"echo": content, "by": self.agent_id}


class Recorder(AgentActor):
    """Keeps what it is sent, per sender; a ``report`` request answers with it."""

    def __init__(self, agent_id: str, **options) -> None:
        super().__init__(agent_id, **options)
        self.received: dict[str, list] = {}
        self.broadcasts = 0

    def on_message(self, message):
        if message.msg_type == MessageType.TASK_REQUEST and message.content == "report":
            return {"received": self.received, "missed": self.comm.missed_broadcasts, "broadcasts": self.broadcasts}
        if message.to_agent == "":
            self.broadcasts += 1
        self.received.setdefault(message.from_agent, []).append(message.content)
        return None


class Sender(AgentActor):
    """On ``{"send_to": ID, "count": N}`` sends N numbered notifications to ID; on
    ``{"broadcast": N}`` broadcasts N notifications."""

    def on_message(self, message):
        content = message.content
        if "send_to" in content:
            for i in range(content["count"]):
                self.comm.send_to_agent(self.comm.message(content["send_to"], i))
            return content["count"]
        for i in range(content["broadcast"]):
            self.comm.broadcast(self.comm.message("", i, MessageType.NOTIFICATION))
        return content["broadcast"]


class Slow(AgentActor):
    """Takes ``sleep_s`` per message (its mailbox fills up)."""

    def on_message(self, message):
        time.sleep(0.2)
        return "done"


class Doubler(AgentActor):
    """A workflow task's agent: doubles the sum of its inputs; remembers the attempts it saw."""

    def __init__(self, agent_id: str, **options) -> None:
        super().__init__(agent_id, **options)
        self.attempts: list = []

    def on_message(self, message):
        if message.content == "attempts":
            return self.attempts
        task = message.content
        self.attempts.append([task["task_id"], task["attempt"]])
        if task["kwargs"].get("sleep_s"):
            time.sleep(task["kwargs"]["sleep_s"])
        return {"doubled": 2 * sum(task["inputs"].values()), "by": self.agent_id}
