"""Training from a published dataset: data.py (datasets -> features -> buckets), tokenizer.py,
tasks.py (per-stage batches and losses), loop.py (the loop), recipes.py (a run: checks, stages)."""
