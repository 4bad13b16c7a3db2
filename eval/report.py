"""An evaluation's `scores.json` and its latency-quality curves, all computed from the instance logs.

scores.json:

    {"run": ..., "family": ..., "data": ..., "config": ..., "split": ..., "sampling_rate": ..., "segment_ms": ...,
     "languages": [...],
     "settings": [{"name": "waitk_k=3", "policy": "waitk", "param": "k", "value": 3,
                   "compute": {"ms_per_token": ..., "tokens": ..., "seconds": ..., "utterances": ...},
                   "targets": {"de": {"BLEU": ..., "chrF": ..., "AL": ..., "LAAL": ..., "LAAL_CA": ...,
                                      "StartOffset": ..., "ms_per_word": ..., "log": "waitk_k=3/de/instances.log"}}},
                  ..., {"name": "offline", ...}],
     "ms_per_token_vs_offline": {"waitk_k=3": 1.08, ...},
     "plots": ["bleu_vs_laal.png", "bleu_vs_laal_ca.png"],
     "conventions": {"latency_unit": ..., "AP": ...}}

- `conventions` states how the latencies were computed, AP's above all: its denominator is the
  prediction's length (Cho and Esipova 2016), which SimulEval 1.1.4 uses only with `--no-use-ref-len`.
- Beside each `instances.log` is the `config.yaml` that `simuleval --score-only --output DIR` reads.

- `compute.ms_per_token` is wall-clock computation per model token (subword), over every output of
  every utterance (EASiST's speed measure); `ms_per_token_vs_offline` divides a setting's by the
  offline one's. `ms_per_word` is the same per detokenized word, from the log (`latency.score_instances`).
- Translation targets get BLEU and chrF (sacrebleu, case-sensitive, on detokenized text) with their
  signatures; the JSTAR transcript ("asr") gets WER on the words without speaker tags and, when the
  references carry tags (SOT), speaker-attributed WER.
- Curves: BLEU against LAAL and against LAAL_CA, one line per translation target across the swept
  settings, offline as a star.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .instances import read_instances, rescore
from .quality import _SPEAKER_TAG, wer

SCORES_FILE = "scores.json"
PLOTS = {"LAAL": "bleu_vs_laal.png", "LAAL_CA": "bleu_vs_laal_ca.png"}
SIMULEVAL_CONFIG = "config.yaml"
CONVENTIONS = {  # eval/latency.py defines them all
    "latency_unit": "word: the detokenized output split on whitespace (SimulEval's --eval-latency-unit word); "
                    "delays in ms of source read when each word was emitted",
    "AP": "sum of the delays / (source ms * predicted words) (Cho and Esipova 2016): a fraction of the source, "
          "1.0 offline. SimulEval 1.1.4 divides by the reference's words whenever a reference is given; "
          "`simuleval --score-only --no-use-ref-len` reproduces this AP",
    "computation_aware": "*_CA: the same formulas on elapsed (delay + computation ms so far), "
                         "as SimulEval's --computation-aware",
}


def write_simuleval_config(folder: str | os.PathLike) -> None:
    """The config.yaml `simuleval --score-only --output FOLDER` reads beside an instances.log: speech in,
    text out (a conversation's channels are still speech)."""
    (Path(folder) / SIMULEVAL_CONFIG).write_text("source_type: speech\ntarget_type: text\n")


def strip_speakers(text: str) -> str:
    """An SOT string without its speaker tags: "<SELF> hi <OTHER> yo" -> "hi yo"."""
    return " ".join(_SPEAKER_TAG.sub(" ", text).split())


def score_log(path: str | os.PathLike, transcript: bool = False, speakers: bool = False) -> dict[str, Any]:
    """Quality and latency of one instance log: a translation (BLEU, chrF), or a `transcript` (WER,
    plus SA-WER when `speakers`: predictions and references carry SOT speaker tags)."""
    if not transcript:
        scores = rescore(path, ("BLEU", "chrF"))
    else:
        scores = rescore(path, ("SA-WER",) if speakers else ())
        instances = read_instances(path)
        scores["WER"] = wer([strip_speakers(i["prediction"]) for i in instances],
                            [strip_speakers(i["reference"]) for i in instances]).score
    scores["ms_per_word"] = scores.pop("ms_per_token", math.nan)
    return scores


def _plot(settings: list[dict[str, Any]], metric: str, path: Path) -> None:
    from matplotlib.figure import Figure  # the object API: no global pyplot state

    fig = Figure(figsize=(5.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    offline = [s for s in settings if s["policy"] == "offline"]
    swept = sorted((s for s in settings if s["policy"] != "offline"), key=lambda s: (s["policy"], s["value"] or 0))
    targets = dict.fromkeys(t for s in settings for t, v in s["targets"].items() if "BLEU" in v)
    for n, target in enumerate(targets):
        color = f"C{n}"
        for policy in dict.fromkeys(s["policy"] for s in swept):
            points = [(s["targets"][target].get(metric, math.nan), s["targets"][target]["BLEU"], s) for s in swept
                      if s["policy"] == policy and target in s["targets"]]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=color, label=f"{target} {policy}")
            for x, y, s in points:
                if s["param"] is not None and math.isfinite(x):
                    ax.annotate(f"{s['param']}={s['value']:g}", (x, y), textcoords="offset points", xytext=(4, 4),
                                fontsize=7)
        for s in offline:
            if target in s["targets"]:
                ax.plot(s["targets"][target].get(metric, math.nan), s["targets"][target]["BLEU"], "*", color=color,
                        markersize=11, label=f"{target} offline")
    ax.set_xlabel(f"{metric.replace('_', '-')} (ms)")
    ax.set_ylabel("BLEU")
    ax.grid(alpha=0.3)
    if targets:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, metadata={"Software": None})


def write(out_dir: str | os.PathLike, header: dict[str, Any], settings: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the offline comparison and the curves to `settings` and write scores.json; returns its content.

    Each setting holds name, policy, param, value, compute {ms, tokens, utterances} and
    targets {target: score_log's scores with "log"}.
    """
    out_dir = Path(out_dir)
    for s in settings:
        c = s["compute"]
        s["compute"] = {"ms_per_token": c["ms"] / c["tokens"] if c["tokens"] else math.nan, "tokens": c["tokens"],
                        "seconds": round(c["ms"] / 1000, 3), "utterances": c["utterances"]}
    summary = dict(header, settings=settings)
    offline = next((s for s in settings if s["policy"] == "offline"), None)
    if offline is not None:
        summary["ms_per_token_vs_offline"] = {
            s["name"]: s["compute"]["ms_per_token"] / offline["compute"]["ms_per_token"]
            for s in settings if s is not offline}
    summary["plots"] = []
    if any("BLEU" in v for s in settings for v in s["targets"].values()):
        for metric, name in PLOTS.items():
            _plot(settings, metric, out_dir / name)
            summary["plots"].append(name)
    summary["conventions"] = CONVENTIONS
    (out_dir / SCORES_FILE).write_text(json.dumps(_no_nan(summary), indent=2, allow_nan=False) + "\n")
    return summary


def _no_nan(value: Any) -> Any:
    """NaN (a metric of no instance) as null: scores.json stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value
