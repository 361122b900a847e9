"""One module per `raydistill` sub-command: its arguments, `run`, and its console output."""
