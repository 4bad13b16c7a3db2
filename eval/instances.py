"""SimulEval-compatible `instances.log`: one JSON object per line, one line per test instance.

Each line holds the keys of INSTANCE_KEYS (extra keys are kept when reading):

    {"index": 0, "prediction": "Hallo Welt", "delays": [640.0, 1280.0],
     "elapsed": [702.5, 1391.0], "prediction_length": 2, "reference": "Hallo Welt",
     "source": "clips/0.wav", "source_length": 1280.0}

`prediction` is the detokenized output, whose whitespace-split words the `delays` and
`elapsed` (ms, see `latency`) time one by one (`to_words` turns a decoded stream of tokens into
them: a word is timed by its last subword, the token that completes it). The log is the record of a run: scores
are recomputed from it (`rescore`), never kept apart from it, as in SimulEval's
`--score-only`, which can read the logs written here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .latency import score_instances
from .quality import bleu, chrf, speaker_attributed_wer, wer

INSTANCE_KEYS = (
    "index",
    "prediction",
    "delays",
    "elapsed",
    "prediction_length",
    "reference",
    "source",
    "source_length",
)
QUALITY_METRICS = ("BLEU", "chrF", "WER", "SA-WER")


def make_instance(
    index: int,
    prediction: str,
    delays: Sequence[float],
    elapsed: Sequence[float],
    reference: str | None,
    source: Any,
    source_length: float,
) -> dict[str, Any]:
    """One log entry; `elapsed` may be empty when wall-clock times were not measured."""
    words = prediction.split()
    if len(delays) != len(words):
        raise ValueError(f"instance {index}: {len(delays)} delays for {len(words)} predicted words")
    if elapsed and len(elapsed) != len(delays):
        raise ValueError(f"instance {index}: {len(elapsed)} elapsed for {len(delays)} delays")
    return {
        "index": index,
        "prediction": " ".join(words),
        "delays": list(delays),
        "elapsed": list(elapsed),
        "prediction_length": len(words),
        "reference": reference,
        "source": source,
        "source_length": source_length,
    }


def to_words(stream, decode: Callable[[list[int]], str], drop: Iterable[int] = ()
             ) -> tuple[str, list[float], list[float]]:
    """The detokenized prediction of a decoded `driver.Stream` and, per whitespace word, its delay and
    elapsed time.

    A word is timed by its last subword: the token just before the one that starts the next word
    (found by decoding ever longer prefixes), the last token for the last word. Tokens in `drop`
    (e.g. speaker tags) are left out first.
    """
    dropped = set(drop)
    kept = [i for i, t in enumerate(stream.tokens) if t not in dropped]
    tokens = [stream.tokens[i] for i in kept]
    words = decode(tokens).split()
    starts: list[int] = []  # starts[w]: the first token at which word w exists
    for i in range(len(tokens)):
        n = min(len(decode(tokens[: i + 1]).split()), len(words))
        starts += [i] * (n - len(starts))
    starts += [len(tokens) - 1] * (len(words) - len(starts))
    last = [starts[w + 1] - 1 if w + 1 < len(words) else len(tokens) - 1 for w in range(len(words))]
    last = [max(i, starts[w]) for w, i in enumerate(last)]
    return (" ".join(words), [stream.delays[kept[i]] for i in last], [stream.elapsed[kept[i]] for i in last])


def write_instances(path: str | os.PathLike, instances: Iterable[dict[str, Any]]) -> None:
    """Write a whole log; it appears under `path` only once complete."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    # ASCII JSON (json's default) because SimulEval reads logs with the locale's encoding.
    with open(partial, "w", encoding="ascii") as f:
        for ins in instances:
            missing = [k for k in INSTANCE_KEYS if k not in ins]
            if missing:
                raise ValueError(f"instance {ins.get('index')}: missing {missing}")
            f.write(json.dumps(ins) + "\n")
    os.replace(partial, path)


def read_instances(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The instances of a log in file order; blank lines are skipped."""
    instances, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                ins = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{where}: not JSON ({error.msg}); a truncated last line means an interrupted run"
                ) from None
            if not isinstance(ins, dict):
                raise ValueError(f"{where}: expected a JSON object")
            missing = [k for k in INSTANCE_KEYS if k not in ins]
            if missing:
                raise ValueError(f"{where}: missing {missing}")
            if ins["index"] in seen:
                raise ValueError(f"{where}: index {ins['index']} appears twice")
            seen.add(ins["index"])
            instances.append(ins)
    return instances


def rescore(
    path: str | os.PathLike,
    quality: Sequence[str] = ("BLEU", "chrF"),
    bleu_tokenize: str = "13a",
    wer_normalize: bool = False,
) -> dict[str, Any]:
    """Quality (names from QUALITY_METRICS) and every latency metric of a log.

    Returns `score_instances`' keys plus one per quality metric, and `<name>_signature`
    for BLEU and chrF. Empty predictions count in quality (as empty hypotheses) but not
    in latency (see `latency.score_instances`).
    """
    unknown = set(quality) - set(QUALITY_METRICS)
    if unknown:
        raise ValueError(f"unknown quality metrics {sorted(unknown)}; choose from {QUALITY_METRICS}")
    instances = read_instances(path)
    result: dict[str, Any] = {}
    if quality:
        no_reference = [ins["index"] for ins in instances if ins["reference"] is None]
        if no_reference:
            raise ValueError(f"{path}: quality needs references; none for instances {no_reference[:10]}")
        hypotheses = [ins["prediction"] for ins in instances]
        references = [ins["reference"] for ins in instances]
        for name in quality:
            if name == "BLEU":
                score = bleu(hypotheses, references, bleu_tokenize)
                result[name], result[f"{name}_signature"] = score.score, score.signature
            elif name == "chrF":
                score = chrf(hypotheses, references)
                result[name], result[f"{name}_signature"] = score.score, score.signature
            elif name == "WER":
                result[name] = wer(hypotheses, references, wer_normalize).score
            else:
                result[name] = speaker_attributed_wer(hypotheses, references, wer_normalize).total.score
    return result | score_instances(instances)
