"""The published dataset configs, one module each: what a row is, its features, how a stage's
record becomes rows, and what the card shows of it.

A config module has `NAME`; `SOURCE`, the step (pipeline/steps.py) whose records it publishes;
`enabled(settings)`; `features(settings)`, the `datasets.Features` of its shards;
`rows(record, settings)`, the rows of one record; and for the dataset card `ROW` (what one row
is), `COLUMNS` (each column's unit and meaning, pipeline/columns.py; every column needs one),
`USAGE` (a line of Python on a loaded row, `{lang}` filled in), `LANGUAGE_COLUMN` (a struct
with a field per language), `FIGURE_COLUMNS` and `add_figures(table, figures, langs, published)`
(what one shard adds to the card's figures).
"""

from __future__ import annotations

from . import conversations, offline, simulmt, simulst

# In the order the card lists them.
CONFIGS = {config.NAME: config for config in (offline, simulst, simulmt, conversations)}


def enabled(settings) -> list:
    """The config modules this run publishes."""
    return [config for config in CONFIGS.values() if config.enabled(settings)]
