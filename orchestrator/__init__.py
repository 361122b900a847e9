"""Driver side of raydistill: config, CLI, Ray Train / Tune orchestration, data preparation, reports."""
