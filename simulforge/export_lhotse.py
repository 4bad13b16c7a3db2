"""`simulforge export lhotse DATASET OUT`: a published dataset as lhotse manifests.

Per split, `<OUT>/simulforge_<config>_{recordings,supervisions}_<split>.jsonl.gz` (lhotse's recipe
naming) and each clip as `<OUT>/audio/<id>.flac`, so `lhotse.load_manifest` and
`Recording.load_audio` work with no code of ours.

- `offline`, `simulst`: one supervision spans each recording: text, language and speaker from
  the source; `custom` holds every other column (`translation` with one key per language present,
  the simulst chunk columns, ...) except `embedding` (384 floats an utterance), which
  `--embedding` keeps; `alignment["word"]` holds the word timings of the `simulst` `words` column.
- `conversations`: a multi-channel recording per conversation and one supervision per turn
  (`segments`), on every channel: text, language, `speaker` SELF or OTHER (as in the RTTM), the
  words of that turn as `alignment["word"]`, and in `custom` the turn's `translation`, its corpus
  `source_speaker` and `utterance_id`. The conversation's own columns (`sot_text`,
  `sot_translation`, `translation_chunks`, `room`, `split`) go to the `custom` of a `MultiCut` per conversation in
  `<OUT>/simulforge_conversations_cuts_<split>.jsonl.gz` (`room.array` as `room.array_preset`:
  lhotse would take a dict with an `array` key for an array manifest).

The dataset is streamed (nothing is copied into the datasets cache) and the manifests are
written under `<OUT>/.partial/` and moved into place once whole.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

# Columns that become lhotse fields of their own; every other column goes into `custom`.
OWN_FIELDS = {"id", "audio", "duration", "source_text", "source_lang", "speaker", "words"}
EMBEDDING = "embedding"
CONFIGS = ("offline", "simulst", "conversations")
# Conversation columns for the cut's `custom` (the rest are the recording, the supervisions or derived: rttm).
CONVERSATION_CUSTOM = ("split", "sot_text", "sot_translation", "translation_chunks", "room")
PARTIAL = ".partial"


def audio_path(audio_dir: Path, utt_id: str) -> Path:
    """`<audio_dir>/<id>.flac`; ids are corpus-prefixed ("mustc/ted_767_3"), so corpora get folders."""
    rel = PurePosixPath(utt_id + ".flac")
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"id {utt_id!r} would write outside {audio_dir}")
    return audio_dir.joinpath(*rel.parts)


def _recording(row: dict[str, Any], audio_dir: Path):
    """The row's audio written to its FLAC file, as a lhotse Recording."""
    from lhotse import Recording

    data = row["audio"]["bytes"]
    if not data:
        raise ValueError(f"{row['id']}: the row holds no audio bytes (only a path: {row['audio'].get('path')})")
    path = audio_path(audio_dir, row["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Recording.from_file(path, recording_id=row["id"])


def _present(per_language: dict[str, str | None] | None) -> dict[str, str]:
    """The languages a per-language struct has: the Parquet schema has a key for every language of the
    build, and absent ones read back as None."""
    return {lang: text for lang, text in (per_language or {}).items() if text is not None}


def _word(word: str, start: float, end: float):
    from lhotse.supervision import AlignmentItem

    # Timings are float columns: round off the digits the float type adds, to the microsecond.
    return AlignmentItem(symbol=word, start=round(start, 6), duration=round(end - start, 6))


def to_manifests(row: dict[str, Any], audio_dir: Path, *, embedding: bool = False):
    """One `offline`/`simulst` row (audio not decoded) → (Recording, SupervisionSegment); writes the clip's FLAC."""
    from lhotse import SupervisionSegment

    recording = _recording(row, audio_dir)
    custom = {k: v for k, v in row.items() if k not in OWN_FIELDS and (embedding or k != EMBEDDING)}
    if isinstance(custom.get("translation"), dict):
        custom["translation"] = _present(custom["translation"])
    words = row.get("words")
    alignment = {"word": [_word(w["word"], w["start"], w["end"]) for w in words]} if words else None
    supervision = SupervisionSegment(
        id=row["id"], recording_id=row["id"], start=0.0, duration=recording.duration, channel=0,
        text=row.get("source_text"), language=row.get("source_lang"), speaker=row.get("speaker"),
        custom=custom or None, alignment=alignment,
    )
    return recording, supervision


def _turn_words(row: dict[str, Any]) -> list[list]:
    """The conversation's `words`, per turn: a word belongs to the turn of its speaker that holds its
    midpoint. ValueError for a word no turn holds."""
    turns = row["segments"]
    out: list[list] = [[] for _ in turns]
    for w in row.get("words") or []:
        middle = (w["start_s"] + w["end_s"]) / 2
        owner = next((k for k, t in enumerate(turns)
                      if t["speaker"] == w["speaker"] and t["start_s"] - 1e-6 <= middle <= t["end_s"] + 1e-6), None)
        if owner is None:
            raise ValueError(f"{row['id']}: word {w['word']!r} of {w['speaker']} at {w['start_s']}-{w['end_s']} s "
                             "lies in none of that speaker's turns")
        out[owner].append(_word(w["word"], w["start_s"], w["end_s"]))
    return out


def conversation_manifests(row: dict[str, Any], audio_dir: Path):
    """One `conversations` row → (Recording, [SupervisionSegment per turn], MultiCut); writes its FLAC."""
    from lhotse import SupervisionSegment
    from lhotse.cut import MultiCut

    recording = _recording(row, audio_dir)
    channels = list(recording.channel_ids)
    supervisions = []
    for k, (turn, words) in enumerate(zip(row["segments"], _turn_words(row), strict=True)):
        custom = {"translation": _present(turn.get("translations")), "source_speaker": turn["source_speaker"],
                  "utterance_id": turn["utterance_id"]}
        supervisions.append(SupervisionSegment(
            id=f"{row['id']}-{k:03d}", recording_id=row["id"], start=round(turn["start_s"], 6),
            duration=round(turn["end_s"] - turn["start_s"], 6), channel=channels, text=turn["text"],
            language="en", speaker=turn["speaker"], custom=custom, alignment={"word": words} if words else None,
        ))
    custom = {k: row[k] for k in CONVERSATION_CUSTOM if k in row}
    for key in ("sot_translation", "translation_chunks"):
        if isinstance(custom.get(key), dict):
            custom[key] = _present(custom[key])
    if isinstance(custom.get("room"), dict):
        # lhotse reads a dict in `custom` that has a key "array" as an array manifest, and drops that key
        custom["room"] = {("array_preset" if k == "array" else k): v for k, v in custom["room"].items()}
    cut = MultiCut(id=row["id"], start=0.0, duration=recording.duration, channel=channels, recording=recording,
                   supervisions=supervisions, custom=custom)
    return recording, supervisions, cut


def export_split(rows: Iterable[dict[str, Any]], out_dir: Path, prefix: str, split: str, *, config: str = "offline",
                 embedding: bool = False) -> tuple[int, int, list[Path]]:
    """Writes one split's manifests; returns the recordings and supervisions written and the manifests' paths."""
    from lhotse import CutSet, RecordingSet, SupervisionSet

    kinds = ["recordings", "supervisions"] + (["cuts"] if config == "conversations" else [])
    names = [f"{prefix}_{kind}_{split}.jsonl.gz" for kind in kinds]
    partial = out_dir / PARTIAL
    partial.mkdir(parents=True, exist_ok=True)
    n = m = 0
    cuts_path = partial / names[2] if config == "conversations" else None
    with RecordingSet.open_writer(partial / names[0]) as recs, SupervisionSet.open_writer(partial / names[1]) as sups, \
            CutSet.open_writer(cuts_path) as cuts:
        for row in rows:
            if config == "conversations":
                recording, supervisions, cut = conversation_manifests(row, out_dir / "audio")
                cuts.write(cut)
            else:
                recording, supervision = to_manifests(row, out_dir / "audio", embedding=embedding)
                supervisions = [supervision]
            recs.write(recording)
            for supervision in supervisions:
                sups.write(supervision)
            n, m = n + 1, m + len(supervisions)
    for name in names:
        os.replace(partial / name, out_dir / name)
    partial.rmdir()
    return n, m, [out_dir / name for name in names]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulforge export lhotse",
                                description="Write lhotse Recording and Supervision manifests of a published dataset.")
    p.add_argument("dataset", help="a published dataset folder (as written by `simulforge curate`)")
    p.add_argument("out", help="folder for the manifests and audio/")
    p.add_argument("--config", default="offline", choices=CONFIGS)
    p.add_argument("--split", action="append", help="a split to export (repeatable; default: all)")
    p.add_argument("--embedding", action="store_true",
                   help="keep the embedding column in each supervision's custom (offline, simulst; left out by "
                        "default: hundreds of floats per utterance)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # A local folder needs no hub: never let a typo in the path turn into a download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    if not os.path.isdir(args.dataset):
        return _fail(f"{args.dataset}: no such dataset folder")
    configs = datasets.get_dataset_config_names(args.dataset)
    if args.config not in configs:
        return _fail(f"{args.dataset} has no {args.config!r} config; it has {', '.join(configs)}")
    ds = datasets.load_dataset(args.dataset, args.config, streaming=True)
    splits = args.split or list(ds)
    unknown = [s for s in splits if s not in ds]
    if unknown:
        return _fail(f"{args.dataset} ({args.config}) has no split {unknown[0]!r}; it has {', '.join(ds)}")
    out = Path(args.out).resolve()  # recordings point at absolute paths, so they load from any folder
    for split in splits:
        rows = ds[split].cast_column("audio", datasets.Audio(decode=False))
        try:
            n, m, paths = export_split(rows, out, f"simulforge_{args.config}", split, config=args.config,
                                       embedding=args.embedding)
        except ValueError as e:
            return _fail(str(e))
        counts = f"{n} recordings and supervisions" if n == m else f"{n} recordings, {m} supervisions, {n} cuts"
        print(f"{split}: {counts} -> {', '.join(str(p) for p in paths)}")
    return 0


def _fail(message: str) -> int:
    print(f"simulforge export lhotse: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
