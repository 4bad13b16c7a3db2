"""Output quality: BLEU and chrF (sacrebleu), WER and speaker-attributed WER (jiwer).

All scores are corpus-level and on a 0-100 scale. Inputs are detokenized strings, one
hypothesis per reference, in the same order:

- BLEU and chrF are case-sensitive and let sacrebleu tokenize (BLEU: `13a` unless
  told otherwise); each comes with its sacrebleu signature, which belongs next to the
  number in any report.
- WER compares whitespace-split words as they are: case and punctuation count unless
  `normalize=True`, which lowercases and removes Unicode punctuation on both sides first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
from sacrebleu.metrics import BLEU, CHRF

_REMOVE_CASE_AND_PUNCTUATION = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation()])
# A speaker tag in an SOT transcript: <SELF>, <OTHER>, <spk1>, ... The leading letter keeps
# decoder markers such as <|end-of-write|> out.
_SPEAKER_TAG = re.compile(r"<([A-Za-z][\w-]*)>")


@dataclass(frozen=True)
class QualityScore:
    score: float
    signature: str  # sacrebleu's, e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


@dataclass(frozen=True)
class WERScore:
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def score(self) -> float:
        """WER in percent; NaN when there are no reference words to measure against."""
        return 100.0 * self.errors / self.reference_words if self.reference_words else math.nan


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise ValueError("no segments to score")


def bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> QualityScore:
    """Corpus BLEU; `tokenize` is a sacrebleu tokenizer name ("13a", "zh", "ja-mecab", ...)."""
    _check_pairs(hypotheses, references)
    metric = BLEU(tokenize=tokenize)
    score = metric.corpus_score(list(hypotheses), [list(references)]).score
    return QualityScore(score, str(metric.get_signature()))


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> QualityScore:
    """Corpus chrF (character 6-grams, beta 2, no word n-grams)."""
    _check_pairs(hypotheses, references)
    metric = CHRF()
    score = metric.corpus_score(list(hypotheses), [list(references)]).score
    return QualityScore(score, str(metric.get_signature()))


def _words(text: str, normalize: bool) -> str:
    # One space between words, so that jiwer splits exactly as str.split() does.
    return " ".join((_REMOVE_CASE_AND_PUNCTUATION(text) if normalize else text).split())


def _count(hypotheses: Sequence[str], references: Sequence[str], normalize: bool) -> WERScore:
    out = jiwer.process_words(
        [_words(r, normalize) for r in references], [_words(h, normalize) for h in hypotheses]
    )
    return WERScore(
        out.substitutions, out.deletions, out.insertions, out.substitutions + out.deletions + out.hits
    )


def wer(hypotheses: Sequence[str], references: Sequence[str], normalize: bool = False) -> WERScore:
    """Corpus WER: each pair is aligned on its own and the edit counts are summed."""
    _check_pairs(hypotheses, references)
    return _count(hypotheses, references, normalize)


def split_speakers(sot_text: str) -> dict[str, str]:
    """Words of an SOT transcript per speaker, in order: "<A> x <B> y <A> z" -> {"A": "x z", "B": "y"}.

    A tag applies to the words after it up to the next tag; words before the first tag
    go to speaker "" (no speaker).
    """
    words: dict[str, list[str]] = {}
    speaker = ""
    # re.split with a group alternates text, tag name, text, ...; tags need no spaces around them.
    for i, piece in enumerate(_SPEAKER_TAG.split(sot_text)):
        if i % 2:
            speaker = piece
            words.setdefault(speaker, [])
        elif piece.split():
            words.setdefault(speaker, []).extend(piece.split())
    return {speaker: " ".join(ws) for speaker, ws in words.items()}


@dataclass(frozen=True)
class SpeakerWER:
    total: WERScore
    per_speaker: dict[str, WERScore]  # by tag name without brackets ("SELF"); "" for untagged words


def speaker_attributed_wer(
    hypotheses: Sequence[str], references: Sequence[str], normalize: bool = False
) -> SpeakerWER:
    """Speaker-attributed WER of serialized-output-training transcripts.

    For each segment, the words of each speaker (reference and hypothesis alike) are
    concatenated in order (`split_speakers`), and the hypothesis words of speaker S are
    aligned against the reference words of S only. A speaker missing on one side has an
    empty stream there. Per-speaker counts are summed over segments; the total sums over
    speakers, so total WER = all errors / all reference words.

    So a word given to the wrong speaker is an error twice over: it is missing from its
    true speaker's stream (a deletion, or a substitution there) and extra in the other
    speaker's stream (an insertion, or a substitution). Example: reference
    "<SELF> a b <OTHER> c", hypothesis "<SELF> a b c": SELF has 1 insertion, OTHER 1
    deletion, total 2 errors / 3 words = 66.7 %, where plain WER of the words is 0.
    Which tag is which speaker is taken as given (no permutation search, unlike cpWER),
    since SOT tags name roles such as SELF and OTHER.
    """
    _check_pairs(hypotheses, references)
    streams: dict[str, tuple[list[str], list[str]]] = {}
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp, ref = split_speakers(hypothesis), split_speakers(reference)
        for speaker in sorted(hyp.keys() | ref.keys()):
            hyps, refs = streams.setdefault(speaker, ([], []))
            hyps.append(hyp.get(speaker, ""))
            refs.append(ref.get(speaker, ""))
    per_speaker = {speaker: _count(hyps, refs, normalize) for speaker, (hyps, refs) in streams.items()}
    scores = per_speaker.values()
    total = WERScore(
        substitutions=sum(s.substitutions for s in scores),
        deletions=sum(s.deletions for s in scores),
        insertions=sum(s.insertions for s in scores),
        reference_words=sum(s.reference_words for s in scores),
    )
    return SpeakerWER(total, per_speaker)
