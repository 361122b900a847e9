"""`raydistill plan`'s model: per-GPU memory of a teacher/student pair under each ZeRO option."""
