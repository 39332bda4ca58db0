"""AgentFlow: distributed parallel execution of agents and tasks, on a ZeroMQ actor runtime.

The public face of the project. What a program needs is importable from here:

    from agentflow import Client, parse_workflow, DistributedLock

    with Client("127.0.0.1:6767,127.0.0.1:6768,127.0.0.1:6769") as client:
        client.submit_workflow(parse_workflow(open("examples/diamond.yaml").read()))

This package is also the composition root: the CLI (``agentflow.cli``), the master and worker
processes (``agentflow.master``, ``agentflow.worker``) and the local-cluster launcher
(``agentflow.cluster``) are the only code that puts actors together into processes. The layers
below it are ``actors/`` (one actor per file), ``runtime/`` (I/O: sockets, storage, processes)
and ``protocols/`` (pure state machines and the wire format); imports point down only.
"""

from __future__ import annotations

from actors.agent import AgentActor
from agentflow.cluster import LocalCluster
from protocols.agents import AgentMessage, MessageType
from protocols.workflow_run import TaskDependencyGraph, TaskState, WorkflowState
from protocols.workflow_spec import TaskNode, TaskPriority, Workflow, WorkflowError
from protocols.queue import PriorityTaskQueue, QueueStats
from protocols.raft import RaftConfig
from protocols.registry import HealthCheckConfig, WorkerInfo, WorkerRegistry, WorkerResources, WorkerStatus
from protocols.workflow import dump_workflow, parse_workflow
from runtime.actor import Actor
from runtime.agents import (
    AgentCommunication,
    AgentCommunicationError,
    AgentError,
    AgentExists,
    AgentNotFound,
    AgentUnavailable,
    MailboxFull,
    RequestTimeout,
)
from runtime.client import Client, ClusterUnavailable
from runtime.future import AskTimeout, RemoteError
from runtime.locks import AutoRenewLock, DistributedLock, LockLost, LockTimeout
from runtime.node import Node, Ref

__all__ = [
    "Actor",
    "AgentActor",
    "AgentCommunication",
    "AgentCommunicationError",
    "AgentError",
    "AgentExists",
    "AgentMessage",
    "AgentNotFound",
    "AgentUnavailable",
    "AskTimeout",
    "AutoRenewLock",
    "Client",
    "ClusterUnavailable",
    "DistributedLock",
    "HealthCheckConfig",
    "LocalCluster",
    "LockLost",
    "LockTimeout",
    "MailboxFull",
    "MessageType",
    "Node",
    "PriorityTaskQueue",
    "QueueStats",
    "RaftConfig",
    "Ref",
    "RemoteError",
    "RequestTimeout",
    "TaskDependencyGraph",
    "TaskNode",
    "TaskPriority",
    "TaskState",
    "Workflow",
    "WorkflowError",
    "WorkflowState",
    "WorkerInfo",
    "WorkerRegistry",
    "WorkerResources",
    "WorkerStatus",
    "dump_workflow",
    "parse_workflow",
]
