"""A training run on the driver: TorchTrainer set-up, run dir, telemetry, the local Ray session."""
