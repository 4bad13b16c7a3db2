"""Training from a published dataset: data.py (datasets -> features -> buckets), tokenizer.py,
tasks.py (the `Task` base; each model family defines its tasks beside its model), simulst.py (the
simulst config's chunks and policy labels), loop.py (the loop), recipes.py (a run: checks, stages)."""
