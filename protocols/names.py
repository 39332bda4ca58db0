"""The names actors are spawned under: a message's destination on the wire.

One place for them, because a name is a contract between processes: a worker tells the
``scheduler`` of a master, a client asks its ``raft`` and ``lock`` actors.
"""

RAFT_ACTOR = "raft"
SCHEDULER_ACTOR = "scheduler"
LOCK_ACTOR = "lock"
WORKER_ACTOR = "worker"
AGENTS_ACTOR = "agents"  # the agent directory on every master
AGENT_HOST_ACTOR = "agent-host"  # on every node that hosts agents
OBSERVER_ACTOR = "observer"
