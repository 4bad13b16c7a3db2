"""Evaluation, split as SimulEval splits it:
- agent: agent.py (the streaming protocol every model family implements, in models/<family>.py),
  policies.py (when an agent writes), driver.py (feeds a clip to an agent segment by segment and
  times every token);
- instance log: instances.py (SimulEval's `instances.log`: one line per utterance, its words with
  their delays);
- scorer: quality.py (BLEU, chrF, WER, SA-WER), latency.py (AL, LAAL, DAL, AP and their
  computation-aware variants), report.py (scores.json and curves, computed from the logs).
run.py evaluates a trained run with them (`simulforge evaluate`); data_quality.py scores a
published dataset (`simulforge evaluate data`)."""
