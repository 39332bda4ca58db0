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
QUEUE_ACTOR = "queue"  # the leader's queue of ready tasks, beside the scheduler
REGISTRY_ACTOR = "registry"  # the leader's table of workers, beside the scheduler
OBSERVER_ACTOR = "observer"
