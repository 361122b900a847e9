"""Everything that runs inside a Ray Train worker. Never imports `orchestrator`."""
