"""Where a build's data came from and what terms it is under: the card's sources section and the
license check of `simulforge publish`.

`about(settings, tasks)` records, per corpus, its folder, what the readers found there (language
pairs, splits, files), any release its file and folder names state, the license configured for
it, and whether it is the demo corpora (synthesized speech, texts written for this project,
so the corpora's own licenses do not apply to it). The card writes this into its YAML header
(`simulforge.sources`), where `restrictions` reads it back before an upload.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..demo.corpora import _MARKER as DEMO_MARKER
from ..transforms import files

# The demo corpora: sentences written for this project (under its license) spoken by espeak-ng, whose
# license covers the program, not the speech it produces.
DEMO_LICENSE = "apache-2.0"
# A version a corpus's file or folder names state: MUSTC_v1.0, covost_v2.en_de.tsv, cv-corpus-4-2019-12-10.
_RELEASE = re.compile(r"(?i)(cv-corpus-[\w.-]+|(?<![a-z0-9])v\d+(?:\.\d+)*(?![a-z0-9]))")


@dataclass
class Source:
    corpus: str
    path: str
    license: str  # the terms that apply to this build's data from it (DEMO_LICENSE for the demo)
    configured_license: str  # `corpus.<name>.license`: the real corpus's terms
    synthesized: bool  # the simulforge demo corpora in the corpus's layout
    found: str  # what the readers planned: language pairs, splits, files
    releases: list[str] = field(default_factory=list)  # versions named in the layout ("v1.0", "cv-corpus-4-...")


@dataclass
class About:
    """What the card states of a build's input beyond its stats."""

    input: str | None
    sources: list[Source]
    demo: dict[str, str] = field(default_factory=dict)  # the demo's README.txt settings (seed, scale, ...)
    speaker_tokens: dict[str, str] = field(default_factory=dict)  # SELF/OTHER -> the token in SOT strings
    sot_mode: str = ""
    levels: list[str] = field(default_factory=list)  # latency levels, lowest first
    segment_backend: str = ""
    align_backend: str = ""

    @property
    def synthesized(self) -> bool:
        return bool(self.sources) and all(s.synthesized for s in self.sources)

    def header(self) -> dict[str, Any]:
        """The machine-readable part, for the card's `simulforge:` header block."""
        return {"input": self.input, "synthesized": self.synthesized,
                "sources": {s.corpus: {"license": s.license, "configured_license": s.configured_license,
                                       "synthesized": s.synthesized, "path": s.path, "releases": s.releases}
                            for s in self.sources}}


def _demo_readme(corpus_root: str) -> dict[str, str] | None:
    """The settings in the demo's README.txt when `corpus_root` lies in the demo corpora, else None."""
    readme = files.join(posixpath.dirname(corpus_root.rstrip("/")), "README.txt")
    if not files.exists(readme):
        return None
    text = files.read_bytes(readme).decode("utf-8", "replace")
    if DEMO_MARKER not in text:
        return None
    pairs = (line.split(":", 1) for line in text.splitlines() if re.match(r"^\w+: ", line))
    return {k.strip(): v.strip() for k, v in pairs}


def releases(root: str, paths: list[str]) -> list[str]:
    """Versions the corpus folder's name or its files' names state, in the order found."""
    names = [root.rstrip("/")] + [p[len(root):] if p.startswith(root) else p for p in paths]
    found: dict[str, None] = {}
    for name in names:
        for part in re.split(r"[/\\]", name):
            for m in _RELEASE.finditer(part):
                found.setdefault(m.group(1), None)
    return list(found)


def _found(tasks) -> str:
    """"en-de, en-es; splits dev, train, tst-COMMON; 12 files"."""
    langs = sorted({t.lang for t in tasks if t.kind != "source"})
    splits = sorted({t.split for t in tasks if t.split != "*"})  # "*": a file that holds every split
    n = len({t.path for t in tasks})
    pairs = ", ".join(f"en-{lang}" for lang in langs) or "no translations"
    where = f"splits {', '.join(splits)}" if splits else "splits named inside the files"
    return f"{pairs}; {where}; {n} file{'s' if n != 1 else ''}"


DEMO_IN_WORK_DIR = "<work_dir>/demo"


def about(settings, tasks) -> About:
    """The provenance of a run of `settings` that read `tasks` (readers.ReadTask)."""
    by_corpus = defaultdict(list)
    for task in tasks:
        by_corpus[task.corpus].append(task)
    sources, demo = [], {}
    # The demo corpora built into the work dir are named by that place, not this machine's path to it,
    # so that a build of them is the same wherever its work dir lies (a local folder or a bucket).
    in_work_dir = settings.input == settings.demo_root()
    for name in settings.corpora:
        root = settings.corpus_root(name)
        shown = root.replace(settings.demo_root(), DEMO_IN_WORK_DIR, 1) if in_work_dir else root
        readme = _demo_readme(root)
        configured = settings.corpus[name].license
        if readme is not None:
            demo = readme
        sources.append(Source(
            corpus=name, path=shown, license=DEMO_LICENSE if readme is not None else configured,
            configured_license=configured, synthesized=readme is not None, found=_found(by_corpus[name]),
            releases=[] if readme is not None else releases(root, [t.path for t in by_corpus[name]])))
    return About(input=DEMO_IN_WORK_DIR if in_work_dir else settings.input, sources=sources, demo=demo,
                 speaker_tokens=settings.simulate.labels.tokens(), sot_mode=settings.simulate.sot.mode,
                 levels=list(settings.segment.levels), segment_backend=settings.segment.backend, align_backend=settings.align.backend)


def restrictions(head: dict[str, Any]) -> list[str]:
    """Why the sources' terms may forbid publishing this build (adapted material of a NoDerivatives
    license), one line per source; [] when nothing does. `head` is the card's YAML header."""
    run = head.get("simulforge") or {}
    sources = run.get("sources")
    if sources is None:  # a card from before sources were recorded: only its overall license is known
        lic = str(head.get("license", ""))
        return [f"the card's license {lic} forbids sharing adapted material"] if no_derivatives(lic) else []
    return [f"{corpus}: its license {s.get('license')} forbids sharing adapted material (the chunked, aligned "
            "and simulated data here adapt it)"
            for corpus, s in sources.items() if no_derivatives(str(s.get("license", "")))]


def no_derivatives(license_: str) -> bool:
    return "nd" in license_.lower().split("-")
