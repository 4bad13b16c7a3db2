"""Speaker-attributed scoring of an SOT transcript against a conversation's timed words.

A conversation row's `words` column gives every word of both speakers with its speaker and its
true end time. `eval/run.py` keeps them in the transcript's instance log (`reference_words`:
[[speaker, word, end ms], ...]), so the scores below, like every score, come from the log alone:

- SA-WER per speaker (`quality.speaker_attributed_wer`): the hypothesis words under a speaker's
  tag are aligned with that speaker's reference words only; the total is what `report.score_log`
  reports as SA-WER. It is cpWER with the permutation fixed rather than searched: the tags name
  roles (SELF, the wearer; OTHER, the partner), the same people in reference and hypothesis.
- Word delay: in that per-speaker alignment, each hypothesis word that matches its reference
  word exactly (a hit) was emitted after `delays[i]` ms of audio had been read; its delay is
  that minus the word's true end. Only hits count: a substituted or inserted word has no true
  end that is its own. Mean and max over every hit of every conversation. A reference tag takes
  the times of the role whose timed words spell its words (so any speaker tokens work); an
  instance whose timed words spell none of a tag's is counted as `unscored`, not guessed at.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jiwer

from .instances import read_instances
from .quality import _SPEAKER_TAG, speaker_attributed_wer, split_speakers

KEY = "reference_words"  # the instance log key eval/run.py adds to the transcript's instances


def reference_words(words: list[dict[str, Any]] | None) -> list[list]:
    """A row's `words` column as the log keeps it: [[speaker, word, end ms], ...]."""
    return [[w["speaker"], w["word"], round(1000 * w["end_s"], 3)] for w in words or []]


def _tagged(prediction: str, delays: list[float]) -> dict[str, list[tuple[str, float]]]:
    """(word, delay) per speaker tag, as `split_speakers` splits the prediction (a tag glued to a word
    splits it; words before any tag go to speaker "")."""
    out: dict[str, list[tuple[str, float]]] = {}
    speaker = ""
    for token, delay in zip(prediction.split(), delays, strict=True):
        for i, piece in enumerate(_SPEAKER_TAG.split(token)):
            if i % 2:
                speaker = piece
            elif piece:
                out.setdefault(speaker, []).append((piece, delay))
    return out


def _true_ends(reference: str, timed: list[list]) -> dict[str, tuple[list[str], list[float]]] | None:
    """Per speaker tag of the reference, its words and their true ends (ms): the words of the role
    whose timed words spell them. None when some tag's words are no role's."""
    by_role: dict[str, tuple[list[str], list[float]]] = {}
    for role, word, end_ms in timed:
        words, ends = by_role.setdefault(role, ([], []))
        words.append(word)
        ends.append(end_ms)
    out = {}
    for tag, text in split_speakers(reference).items():
        out[tag] = next((spelled for spelled in by_role.values() if spelled[0] == text.split()), None)
        if out[tag] is None:
            return None
    return out


def word_delays(prediction: str, delays: list[float], reference: str, timed: list[list]) -> list[float] | None:
    """The delay (ms) of each hypothesis word that hits its reference word, from the word's true end;
    None when the timed words do not spell the reference."""
    truth = _true_ends(reference, timed)
    if truth is None:
        return None
    said, out = _tagged(prediction, delays), []
    for tag, (words, ends) in truth.items():
        hyp = said.get(tag, [])
        for chunk in jiwer.process_words(" ".join(words), " ".join(w for w, _ in hyp)).alignments[0]:
            if chunk.type == "equal":
                out += [hyp[chunk.hyp_start_idx + k][1] - ends[chunk.ref_start_idx + k]
                        for k in range(chunk.ref_end_idx - chunk.ref_start_idx)]
    return out


def score_log(path: str | os.PathLike) -> dict[str, Any]:
    """SA-WER per speaker and the word delays of a transcript's instance log; {} when its instances
    carry no timed reference words."""
    instances = [i for i in read_instances(path) if i.get(KEY)]
    if not instances:
        return {}
    per_speaker = speaker_attributed_wer([i["prediction"] for i in instances],
                                         [i["reference"] for i in instances]).per_speaker
    delays, unscored = [], 0
    for i in instances:
        found = word_delays(i["prediction"], i["delays"], i["reference"], i[KEY])
        if found is None:
            unscored += 1
        else:
            delays += found
    return {
        "SA-WER_per_speaker": {speaker: s.score for speaker, s in sorted(per_speaker.items())},
        "word_delay_ms": {"mean": sum(delays) / len(delays) if delays else math.nan,
                          "max": max(delays) if delays else math.nan, "words": len(delays), "unscored": unscored},
    }
