"""Runs the Segment transform on the DirectRunner and hands back what came out of it."""

import pickle

import apache_beam as beam
from apache_beam.testing.util import assert_that

from simulforge.transforms.segment import Segment


def _keep(pcoll, path, label):
    # the runner pickles every function it runs, so results travel back through a file
    def save(items):
        path.write_bytes(pickle.dumps(list(items)))

    assert_that(pcoll, save, label=label)


def run_segment(settings, utts, tmp_path):
    """(published utterances, rejects, {stat name: sum}) of one pipeline run."""
    paths = {name: tmp_path / f"{name}.pickle" for name in ("out", "rejects", "stats")}
    with beam.Pipeline() as p:
        out, rejects, stats = p | beam.Create(utts) | Segment(settings)
        _keep(out, paths["out"], "KeepOut")
        _keep(rejects, paths["rejects"], "KeepRejects")
        sums = stats | beam.Map(lambda s: (s.name, s.value)) | beam.CombinePerKey(sum)
        _keep(sums, paths["stats"], "KeepStats")
    out, rejects, stats = (pickle.loads(paths[name].read_bytes()) for name in ("out", "rejects", "stats"))
    return out, rejects, dict(stats)
