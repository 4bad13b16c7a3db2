"""Runs the Segment transform on the default runner profile and hands back what came out of it;
runs the `simulforge` command in a child process that records what it tried to reach."""

import pickle

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that

from simulforge.pipeline import runners
from simulforge.transforms.segment import Segment


def _keep(pcoll, path, label):
    # the runner pickles every function it runs, so results travel back through a file
    def save(items):
        path.write_bytes(pickle.dumps(list(items)))

    assert_that(pcoll, save, label=label)


def run_segment(settings, utts, tmp_path):
    """(published utterances, rejects, {stat name: sum}) of one pipeline run."""
    paths = {name: tmp_path / f"{name}.pickle" for name in ("out", "rejects", "stats")}
    # the `direct` profile, not Beam's default DirectRunner (which would try to download Prism)
    with beam.Pipeline(options=PipelineOptions(runners.profiles()["direct"])) as p:
        out, rejects, stats = p | beam.Create(utts) | Segment(settings)
        _keep(out, paths["out"], "KeepOut")
        _keep(rejects, paths["rejects"], "KeepRejects")
        sums = stats | beam.Map(lambda s: (s.name, s.value)) | beam.CombinePerKey(sum)
        _keep(sums, paths["stats"], "KeepStats")
    out, rejects, stats = (pickle.loads(paths[name].read_bytes()) for name in ("out", "rejects", "stats"))
    return out, rejects, dict(stats)


# `simulforge` in a child process that records, from inside, what a test must not miss: every
# attempt to reach a host other than this one (Python's audit events for name lookups, socket
# connects and urllib requests: nothing is patched, so no code path can bypass them) and the
# class of the runner each pipeline ran on. Extra logger names can be set to DEBUG.
_DRIVER = r"""
import json, logging, sys
record_to, debug = sys.argv[1], json.loads(sys.argv[2])
seen = {"network": [], "runners": []}
LOCAL = ("127.0.0.1", "::1", "localhost", "0.0.0.0", "", None)

def hook(event, args):
    if event == "socket.getaddrinfo" and args[0] not in LOCAL:
        seen["network"].append(f"resolve {args[0]}")
    elif event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in LOCAL:
        seen["network"].append(f"connect {args[1]}")
    elif event == "urllib.Request":
        seen["network"].append(f"urlopen {args[0]}")

sys.addaudithook(hook)
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
for name in debug:
    logging.getLogger(name).setLevel(logging.DEBUG)
import apache_beam as beam

run = beam.Pipeline.run

def recording_run(self, *args, **kwargs):
    seen["runners"].append(type(self.runner).__name__)
    return run(self, *args, **kwargs)

beam.Pipeline.run = recording_run
from simulforge.cli import main
try:
    code = main(sys.argv[3:])
finally:
    with open(record_to, "w") as f:
        json.dump(seen, f)
sys.exit(code)
"""


def run_cli(argv, record_to, *, cwd, env=None, debug_loggers=(), timeout=600):
    """(completed process, {"network": [...], "runners": [...]}) of `simulforge ARGV`."""
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(record_to), json.dumps(list(debug_loggers)), *map(str, argv)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seen = json.loads(record_to.read_text()) if record_to.exists() else None
    return proc, seen
