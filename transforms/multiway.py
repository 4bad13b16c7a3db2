"""The multi-way join: one source clip with its translations into every requested language.

Readers key their parts per corpus: MuST-C by talk and offset (each en-X release repeats
the segment), CoVoST by clip, FLEURS by sentence id (several recordings may share one).
`merge` sees every part under one key. Parts with the same clip id are one clip seen by
several releases: they must agree on the English text and the clip's extent, or the later
release's part is rejected. Counting is in parts: parts in = parts merged + parts rejected.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam

from .records import Reject, Stat, Translation, Utterance
from .stage import run_stage

STAGE = "join"


def _release(part: Utterance | Translation) -> str:
    return part.where.rsplit(":", 1)[0]  # the file a part came from


def merge(key: str, clips: Iterable[Utterance], translations: Iterable[Translation], langs: list[str]
          ) -> Iterator[Utterance | Reject | Stat]:
    clips = sorted(clips, key=lambda u: (u.id, u.where))
    translations = sorted(translations, key=lambda t: (t.lang, t.where))
    shared: dict[str, str] = {}
    for t in translations:
        if not clips:
            yield Reject(f"{key}/{t.lang}", STAGE, "no_source_clip",
                         f"no English recording for {key} ({t.lang} from {t.where})", t.where)
        elif shared.setdefault(t.lang, t.text) != t.text:
            yield Reject(f"{key}/{t.lang}", STAGE, "join_conflict",
                         f"{t.where} gives another {t.lang} text for sentence {key}", t.where)
        else:
            yield Stat(STAGE, "parts_merged")

    by_id: dict[str, list[Utterance]] = {}
    for clip in clips:
        by_id.setdefault(clip.id, []).append(clip)
    for uid, parts in by_id.items():
        first, releases, accepted = parts[0], set(), []
        merged = dict(first.translations)
        for part in parts:
            release = _release(part)
            if release in releases:
                yield Reject(uid, STAGE, "duplicate_id", f"{uid} appears again in {release} ({part.where})",
                             part.where)
                continue
            releases.add(release)
            if part is not first:
                differs = _disagreement(first, part)
                clash = [lang for lang in part.translations if lang in merged
                         and merged[lang] != part.translations[lang]]
                if differs or clash:
                    detail = differs or f"another {clash[0]} translation than {first.where}"
                    yield Reject(uid, STAGE, "join_conflict", f"{part.where}: {detail}", part.where)
                    continue
                merged.update(part.translations)
            accepted.append(part)
        for lang, text in shared.items():
            merged.setdefault(lang, text)
        kept = {lang: merged[lang] for lang in langs if lang in merged}
        if not kept:
            for part in accepted:
                yield Reject(uid, STAGE, "no_requested_translation",
                             f"{uid} has translations into {sorted(merged) or 'nothing'}, none of {langs}",
                             part.where)
            continue
        yield Stat(STAGE, "parts_merged", len(accepted))
        yield Stat(STAGE, f"coverage/{first.corpus}/clips")
        for lang in kept:
            yield Stat(STAGE, f"coverage/{first.corpus}/{lang}")
        # What the readers changed in the texts kept, from every part (deduplicated, in order).
        fixes = [f for part in accepted for f in part.fixes]
        fixes += [f for t in translations if kept.get(t.lang) == t.text for f in t.fixes]
        yield first.replace(translations=kept, fixes=list(dict.fromkeys(fixes)))


def _disagreement(a: Utterance, b: Utterance) -> str | None:
    if a.source_text != b.source_text:
        return f"English text differs from {a.where}: {b.source_text!r} vs {a.source_text!r}"
    if (a.audio.offset_s, a.audio.duration_s) != (b.audio.offset_s, b.audio.duration_s):
        return f"clip extent differs from {a.where}"
    if a.split != b.split:
        return f"split {b.split} differs from {a.split} in {a.where}"
    return None


class MultiwayJoin(beam.PTransform):
    """(key, Utterance | Translation) parts -> (utterances, rejects, stats)."""

    def __init__(self, langs: list[str]):
        super().__init__()
        self.langs = list(langs)

    def expand(self, parts):
        clips = parts | "Clips" >> beam.Filter(lambda kv: isinstance(kv[1], Utterance))
        texts = parts | "Texts" >> beam.Filter(lambda kv: isinstance(kv[1], Translation))
        grouped = {"clips": clips, "translations": texts} | "CoGroup" >> beam.CoGroupByKey()
        langs = self.langs

        def merge_group(item):
            key, group = item
            return merge(key, group["clips"], group["translations"], langs)

        return run_stage(grouped, STAGE, merge_group)
