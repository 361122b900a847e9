"""A run's report from its metrics.jsonl: health verdict, report.md and report.png."""
