"""A planner, a group of solvers and a reviewer: a job split into parts, solved, reviewed.

    agentflow agent run examples.agents.pipeline:Solver --agent-id solver-1 --group solvers
    agentflow agent run examples.agents.pipeline:Solver --agent-id solver-2 --group solvers
    agentflow agent run examples.agents.pipeline:Reviewer --agent-id reviewer
    agentflow agent run examples.agents.pipeline:Planner --agent-id planner
    agentflow request planner --content '{"numbers": [1, 2, 3, 4, 5, 6, 7, 8], "parts": 4}'

The planner splits the numbers into parts and asks the group "solvers" for each part (any live
member answers; if one dies, the next takes its part). It tells the reviewer what each solver
found, and answers with the total. The reviewer answers a "report" request with what it saw.
"""

from __future__ import annotations

from agentflow import AgentActor, MessageType


class Solver(AgentActor):
    """Sums the part it is given."""

    def on_message(self, message):
        part = message.content["part"]
        return {"sum": sum(part), "solver": self.agent_id}


class Reviewer(AgentActor):
    """Keeps the planner's notifications; a request gets the report."""

    def __init__(self, agent_id: str, **options) -> None:
        super().__init__(agent_id, **options)
        self.seen: list[dict] = []

    def on_message(self, message):
        if message.msg_type == MessageType.NOTIFICATION:
            self.seen = (self.seen + [message.content])[-100:]
            return None
        return {"parts_reviewed": len(self.seen), "solvers": sorted({s["solver"] for s in self.seen}),
                "total": sum(s["sum"] for s in self.seen[-message.content.get("last", len(self.seen)):])
                if isinstance(message.content, dict) else None}


class Planner(AgentActor):
    """Splits a job into parts, has the solvers group solve them, tells the reviewer."""

    def on_message(self, message):
        numbers, parts = message.content["numbers"], max(1, int(message.content.get("parts", 2)))
        size = -(-len(numbers) // parts)
        total = 0
        for start in range(0, len(numbers), size):
            answer = self.comm.request(content={"part": numbers[start:start + size]}, group="solvers",
                                       timeout_ms=5000).content
            total += answer["sum"]
            self.comm.send_to_agent(self.comm.message("reviewer", answer, MessageType.NOTIFICATION))
        return {"total": total, "parts": -(-len(numbers) // size)}
