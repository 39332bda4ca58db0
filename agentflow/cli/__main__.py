"""``python -m agentflow.cli ARGS`` is ``agentflow ARGS``."""

from agentflow.cli import main

main()
