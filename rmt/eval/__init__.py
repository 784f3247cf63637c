"""Evaluation beyond the trainer's held-out batches: BABILong accuracy by input length (`rmt.eval.by_length`)."""
