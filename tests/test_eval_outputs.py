"""What `simulforge evaluate` leaves for the tools around it: beside every instance log the config.yaml
SimulEval's `--score-only --output DIR` reads (scored by SimulEval's own code to the numbers in
scores.json), and scores.json's statement of its AP convention."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# `simuleval --score-only ...`: simuleval.cli.scoring's own lines (its module imports tornado for the
# remote agent service, which `make setup` does not install, so the lines run here without it).
SCORE_ONLY = """
import json, sys
from simuleval import options
from simuleval.evaluator import SentenceLevelEvaluator
sys.argv = ["simuleval", "--score-only", *sys.argv[1:]]
parser = options.general_parser()
options.add_evaluator_args(parser)
options.add_scorer_args(parser)
options.add_dataloader_args(parser)
args = parser.parse_args()
print(json.dumps(SentenceLevelEvaluator.from_args(args).results.to_dict("records")[0]))
"""


def simuleval_score_only(folder, *flags) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCORE_ONLY, "--output", str(folder), *flags],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")  # SimulEval's own
def test_simuleval_scores_every_log_from_its_folder_alone(tiny_runs, published, tmp_path):
    from simulforge.evaluate import main

    tiny_runs("unified")
    out = tmp_path / "eval"
    assert main(["--run", str(tiny_runs.root / "unified"), "--data", published, "--split", "train",
                 "--limit", "2", "--sweep", "k=3", "--out", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert "--no-use-ref-len" in scores["conventions"]["AP"] and "predicted words" in scores["conventions"]["AP"]
    checked = 0
    for setting in scores["settings"]:
        for ours in setting["targets"].values():
            folder = (out / ours["log"]).parent
            plain = simuleval_score_only(folder, "--latency-metrics", "LAAL", "AL")  # reads folder/config.yaml
            assert plain.returncode == 0, plain.stderr[-2000:]
            theirs = json.loads(plain.stdout.splitlines()[-1])
            assert theirs["LAAL"] == pytest.approx(ours["LAAL"], abs=1e-3)  # SimulEval rounds to 3 places
            assert theirs["AL"] == pytest.approx(ours["AL"], abs=1e-3)
            # AP: SimulEval divides by the reference's words unless told not to; ours by the prediction's.
            ap = simuleval_score_only(folder, "--latency-metrics", "AP", "--no-use-ref-len")
            assert ap.returncode == 0, ap.stderr[-2000:]
            assert json.loads(ap.stdout.splitlines()[-1])["AP"] == pytest.approx(ours["AP"], abs=1e-3)
            checked += 1
    assert checked == 4  # de and es, at k=3 and offline
