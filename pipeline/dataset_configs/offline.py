"""The `offline` config: one row per multi-way utterance, published for every run.

Columns: id, corpus, audio (the clip, stored once), duration, speaker, source_lang, source_text,
translation {lang} (null where the utterance lacks a language), fixes (every change made to
what the corpus shipped) and, when the embed stage runs, embedding (the teacher's vector of
the source text).
"""

from __future__ import annotations

from typing import Any

import datasets
import pyarrow as pa

from ...transforms.audio import clip_bytes, clip_name
from ...transforms.embed import teacher_info
from ...transforms.records import Utterance
from .. import plots

NAME = "offline"
SOURCE = "embed"  # the stage whose records it publishes (its parent when that stage is off)
ROW = "one multi-way utterance: audio, source text, one translation per language"
USAGE = 'row["audio"].get_all_samples(), row["translation"]["{lang}"]'
LANGUAGE_COLUMN = "translation"  # one field per language: the card counts rows per language from it
FIGURE_COLUMNS = ("duration",)


def enabled(settings) -> bool:
    return NAME in settings.configs  # always: the config validation requires it


# The card's column table (pipeline/columns.py): path -> (unit, meaning); the type comes from the features
# below. <lang> is each target language's field. Every column needs an entry: the tests check it.
COLUMNS = {
    "id": ("", "utterance id, `<corpus>/<the corpus's own clip id>`; unique in the build"),
    "corpus": ("", "the corpus the clip comes from: `mustc`, `covost` or `fleurs`"),
    "audio": ("", "the clip, mono, stored once as FLAC; `datasets` decodes it to a torchcodec `AudioDecoder`: "
                  "`.get_all_samples()` gives `.data`, a float32 tensor (1, samples) in [-1, 1], and `.sample_rate`"),
    "duration": ("s", "length of the clip"),
    "speaker": ("", "the corpus's speaker id (MuST-C `speaker_id`, Common Voice `client_id`, FLEURS: the "
                    "recording's own id, as FLEURS names no speakers); an opaque id, never a name"),
    "source_lang": ("", "the language of `audio` and `source_text`: always `en`"),
    "source_text": ("", "the English transcript as the corpus ships it (composed to Unicode NFC, zero-width "
                        "characters removed: see `fixes`)"),
    "translation": ("", "one field per target language"),
    "translation.<lang>": ("", "the corpus's reference translation into `<lang>`; null where this utterance has "
                               "none in that language"),
    "fixes": ("", "every change made to what the corpus shipped, one phrase each (`resampled 44100->16000`, "
                  "`source text normalised to NFC`, ...); empty when nothing was changed"),
    "embedding": ("", "the embedding teacher's vector of `source_text`, L2-normalised to length 1 (see "
                      "*Embedding* below); present when the embed stage ran"),
}


def offline_features(langs: list[str], sampling_rate: int, embedding_dim: int | None = None) -> datasets.Features:
    features = {
        "id": datasets.Value("string"),
        "corpus": datasets.Value("string"),
        "audio": datasets.Audio(sampling_rate=sampling_rate),
        "duration": datasets.Value("float32"),
        "speaker": datasets.Value("string"),
        "source_lang": datasets.Value("string"),
        "source_text": datasets.Value("string"),
        "translation": {lang: datasets.Value("string") for lang in langs},
        "fixes": datasets.List(datasets.Value("string")),  # every change made to what the corpus shipped
    }
    if embedding_dim:
        features["embedding"] = datasets.List(datasets.Value("float32"), length=embedding_dim)
    return datasets.Features(features)


def offline_row(utt: Utterance, langs: list[str]) -> dict[str, Any]:
    row = {
        "id": utt.id,
        "corpus": utt.corpus,
        "audio": {"bytes": clip_bytes(utt), "path": clip_name(utt.id)},
        "duration": utt.duration_s,
        "speaker": utt.speaker,
        "source_lang": utt.source_lang,
        "source_text": utt.source_text,
        "translation": {lang: utt.translations.get(lang) for lang in langs},
        "fixes": list(utt.fixes),
    }
    if utt.embedding is not None:
        row["embedding"] = utt.embedding
    return row


def embedding_dim(settings) -> int | None:
    teacher = teacher_info(settings.embed)
    return teacher["dim"] if teacher else None


def features(settings) -> datasets.Features:
    return offline_features(settings.languages, settings.sampling_rate, embedding_dim(settings))


def rows(utt: Utterance, settings) -> list[dict[str, Any]]:
    return [offline_row(utt, settings.languages)]


def add_figures(table: pa.Table, figures: plots.Figures, langs: list[str], published: dict) -> None:
    """Utterance durations, and how many utterances carry every language."""
    if "duration" in table.column_names:
        figures.durations += [d for d in table["duration"].to_pylist() if d is not None]
        figures.all_languages[0] += plots.rows_with_every(table, LANGUAGE_COLUMN, langs)
        figures.all_languages[1] += table.num_rows
