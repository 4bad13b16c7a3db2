"""`simulforge export lhotse DATASET OUT`: a published dataset as lhotse manifests.

Per split, `<OUT>/simulforge_<config>_{recordings,supervisions}_<split>.jsonl.gz` (lhotse's recipe
naming) and each clip as `<OUT>/audio/<id>.flac`, so `lhotse.load_manifest` and
`Recording.load_audio` work with no code of ours. One supervision spans each recording:
text, language and speaker from the source; `custom` holds every other column
(`translation` with one key per language, `embedding`, the simulst chunk columns, ...);
`alignment["word"]` holds the word timings of the `simulst` config's `words` column.

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
PARTIAL = ".partial"


def audio_path(audio_dir: Path, utt_id: str) -> Path:
    """`<audio_dir>/<id>.flac`; ids are corpus-prefixed ("mustc/ted_767_3"), so corpora get folders."""
    rel = PurePosixPath(utt_id + ".flac")
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"id {utt_id!r} would write outside {audio_dir}")
    return audio_dir.joinpath(*rel.parts)


def to_manifests(row: dict[str, Any], audio_dir: Path):
    """One row (audio not decoded) → (Recording, SupervisionSegment); writes the clip's FLAC."""
    from lhotse import Recording, SupervisionSegment
    from lhotse.supervision import AlignmentItem

    utt_id = row["id"]
    data = row["audio"]["bytes"]
    if not data:
        raise ValueError(f"{utt_id}: the row holds no audio bytes (only a path: {row['audio'].get('path')})")
    path = audio_path(audio_dir, utt_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    recording = Recording.from_file(path, recording_id=utt_id)

    custom = {k: v for k, v in row.items() if k not in OWN_FIELDS}
    if isinstance(custom.get("translation"), dict):
        # The Parquet schema has a key for every language of the build; absent ones read back as None.
        custom["translation"] = {lang: text for lang, text in custom["translation"].items() if text is not None}
    words = row.get("words")
    # Timings are float32 columns: round off the digits float32 adds, to the microsecond.
    alignment = {"word": [AlignmentItem(symbol=w["word"], start=round(w["start"], 6),
                                        duration=round(w["end"] - w["start"], 6)) for w in words]} if words else None
    supervision = SupervisionSegment(
        id=utt_id, recording_id=utt_id, start=0.0, duration=recording.duration, channel=0,
        text=row.get("source_text"), language=row.get("source_lang"), speaker=row.get("speaker"),
        custom=custom or None, alignment=alignment,
    )
    return recording, supervision


def export_split(rows: Iterable[dict[str, Any]], out_dir: Path, prefix: str, split: str) -> tuple[int, list[Path]]:
    """Writes one split's manifest pair; returns the row count and the two paths."""
    from lhotse import RecordingSet, SupervisionSet

    names = [f"{prefix}_{kind}_{split}.jsonl.gz" for kind in ("recordings", "supervisions")]
    partial = out_dir / PARTIAL
    partial.mkdir(parents=True, exist_ok=True)
    n = 0
    with RecordingSet.open_writer(partial / names[0]) as recs, SupervisionSet.open_writer(partial / names[1]) as sups:
        for row in rows:
            recording, supervision = to_manifests(row, out_dir / "audio")
            recs.write(recording)
            sups.write(supervision)
            n += 1
    for name in names:
        os.replace(partial / name, out_dir / name)
    partial.rmdir()
    return n, [out_dir / name for name in names]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulforge export lhotse",
                                description="Write lhotse Recording and Supervision manifests of a published dataset.")
    p.add_argument("dataset", help="a published dataset folder (as written by `simulforge curate`)")
    p.add_argument("out", help="folder for the manifests and audio/")
    p.add_argument("--config", default="offline", choices=["offline", "simulst"])
    p.add_argument("--split", action="append", help="a split to export (repeatable; default: all)")
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
            n, paths = export_split(rows, out, f"simulforge_{args.config}", split)
        except ValueError as e:
            return _fail(str(e))
        print(f"{split}: {n} recordings and supervisions -> {paths[0]}, {paths[1]}")
    return 0


def _fail(message: str) -> int:
    print(f"simulforge export lhotse: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
