"""Data preparation: corpus files -> tokenizer -> packed train/eval Parquet shards + manifest."""
