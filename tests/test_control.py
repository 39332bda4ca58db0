"""ControlState: the replicated state machine of the masters (pure)."""

from __future__ import annotations

from protocols.control import ClientCommand, ControlState
from protocols.workflow_spec import TaskNode, Workflow
from protocols.workflow_table import SubmitWorkflow
from protocols.wire import DEFAULT_MAX_FRAME_BYTES, encode


def submit(client_id: str, seq: int) -> bytes:
    workflow = Workflow("wf", "wf", [TaskNode("a", call="builtins:int"), TaskNode("b", call="builtins:int", dependencies=["a"])])
    return encode(ClientCommand(client_id, seq, SubmitWorkflow(workflow, now_ms=0)))


def test_a_retried_client_command_is_answered_with_the_first_result_and_applies_nothing():
    state = ControlState()
    command, first = state.apply(1, submit("c", 1))
    assert isinstance(command, SubmitWorkflow) and first["ok"] and first["ready"] == ["wf/a"]
    # The same (client, seq) logged again: the first answer, and no command for watchers to react
    # to (a scheduler that saw it would queue the workflow's ready tasks a second time).
    command, again = state.apply(2, submit("c", 1))
    assert command is None and again == first
    # A new sequence number is a new command (here refused: the workflow exists).
    command, other = state.apply(3, submit("c", 2))
    assert isinstance(command, SubmitWorkflow) and not other["ok"]


def test_a_state_over_the_frame_limit_snapshots_and_loads():
    """A snapshot is not a frame: a state over 64 MiB (326 MB with the default retention) must
    load from the disk and from the leader's chunks."""
    state = ControlState()
    for index in range(1, 6):  # five workflows of 16 MiB, each an entry under the frame limit
        tasks = [TaskNode(f"t{i}", command="true " + "x" * (8 * 1024 * 1024)) for i in range(2)]
        _, result = state.apply(index, encode(SubmitWorkflow(Workflow(f"big{index}", "big", tasks), now_ms=0)))
        assert result["ok"], result
    data = state.to_snapshot()
    assert len(data) > DEFAULT_MAX_FRAME_BYTES
    restored = ControlState.from_snapshot(data)
    assert restored.to_snapshot() == data
