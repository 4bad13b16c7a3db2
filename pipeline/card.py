"""The dataset card (README.md): where a trainer decides whether to use the data.

A YAML header that `datasets` and the Hub read (configs with their features, languages,
license, task and size categories, the build id and the sources' provenance), then: the
dataset version; per config what a row is, every column's type, unit and meaning (from the
config module's `COLUMNS`, pipeline/columns.py) and how to load it; a PyTorch DataLoader
recipe and the per-language-pair filter; the special tokens, how a missing language is
represented and what the embedding is; rows and hours per split and language; sources with
their licenses, the input they were read from, releases and citations (the demo corpora
say that their speech is synthesized); intended use, limitations and personal information
as the Hub's card template has them; coverage of the multi-way join, rejects, data-quality
figures with plots, and how the data was built and what of it is reproducible.

The build id is the dataset version: a hash of every shard's bytes and of the config hash, so
two builds share an id exactly when they publish the same data. `simulforge publish` hashes
the shards again to check that the card describes the shards beside it, and keeps builds
apart on the hub by this id.
"""

from __future__ import annotations

import hashlib
import re
from string import Template
from typing import Any

import datasets
import yaml

from ..transforms import files
from ..transforms.publish import find_shards, shard_pattern, untagged
from ..transforms.readers import CORPORA
from . import columns, plots, provenance
from .dataset_configs import CONFIGS, simulmt

BUILD_ID_CHARS = 16

# Most restrictive first: a build that mixes corpora is offered under the first that applies.
LICENSE_ORDER = ["cc-by-nc-nd-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-4.0", "cc-by-sa-4.0", "cc-by-4.0", "apache-2.0",
                 "cc0-1.0"]
LICENSE_NAMES = {"cc-by-nc-nd-4.0": "CC BY-NC-ND 4.0", "cc-by-nc-sa-4.0": "CC BY-NC-SA 4.0",
                 "cc-by-nc-4.0": "CC BY-NC 4.0", "cc-by-sa-4.0": "CC BY-SA 4.0", "cc-by-4.0": "CC BY 4.0",
                 "apache-2.0": "Apache 2.0", "cc0-1.0": "CC0 1.0"}
# -- Shards and the build id -------------------------------------------------------------------


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with files.open_read(path) as f:
        while block := f.read(1 << 23):
            h.update(block)
    return h.hexdigest()


def build_id(paths: list[str], config_hash: str) -> str:
    """The dataset version: a hash of the config hash and of every shard's name (without the build id
    it is then given) and bytes."""
    named = sorted((untagged(p), p) for p in paths)
    h = hashlib.sha256(f"config {config_hash}\n".encode())
    for name, path in named:
        h.update(f"{name} {_file_sha256(path)}\n".encode())
    return h.hexdigest()[:BUILD_ID_CHARS]


def front_matter(text: str) -> dict[str, Any]:
    """The card's YAML header; ValueError if it has none or it does not parse."""
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    if not match:
        raise ValueError("the card does not start with a YAML header between --- lines")
    try:
        header = yaml.safe_load(match.group(1))
    except yaml.YAMLError as e:
        raise ValueError(f"the card's YAML header does not parse: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("the card's YAML header is not a mapping")
    return header


# -- The card ----------------------------------------------------------------------------------


def size_category(n: int) -> str:
    for limit, name in [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")]:
        if n < limit:
            return name
    return "n>1M"


def most_restrictive(licenses: list[str]) -> str:
    """The license a mixed build is offered under: terms we cannot rank make it `other`."""
    if not licenses or any(lic not in LICENSE_ORDER for lic in licenses):
        return "other"
    return next(lic for lic in LICENSE_ORDER if lic in licenses)


def utterances(stats: dict[str, Any]) -> int:
    """Published utterances: the `offline` rows (one per utterance; `simulmt` has one per level)."""
    published = stats["published"]
    if "offline" in published:
        return sum(published["offline"]["rows"].values())
    return max((sum(p["rows"].values()) for p in published.values()), default=0)


def header(configs: dict[str, datasets.Features], splits: dict[str, list[str]], stats: dict[str, Any],
           langs: list[str], license_: str, build: str, about: provenance.About | None = None) -> dict:
    run = stats["run"]
    block = {"build": build, "pipeline": run["simulforge"], "config_hash": run["config_hash"],
             "git_commit": run["git_commit"]}
    if about is not None:
        block.update(about.header())
    return {
        "pretty_name": f"simulforge English→{', '.join(langs)} simultaneous speech translation",
        "language": ["en", *langs],
        "license": license_,
        "task_categories": ["automatic-speech-recognition", "translation"],
        "tags": ["speech-translation", "simultaneous-translation", "simulforge",
                 *(["synthetic"] if about is not None and about.synthesized else [])],
        "size_categories": [size_category(utterances(stats))],
        "configs": [
            {"config_name": name, "data_files": [
                {"split": split, "path": shard_pattern(name, split, build)} for split in splits[name]
            ]}
            for name in configs if splits.get(name)
        ],
        "dataset_info": [
            {"config_name": name, "features": features._to_yaml_list()}
            for name, features in configs.items() if splits.get(name)
        ],
        "simulforge": block,
    }


def _title(corpus: str) -> str:
    return CORPORA[corpus].TITLE if corpus in CORPORA else corpus


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.3f}"


def _quantile_row(label: str, values: list[float], digits: int = 2) -> str:
    s = plots.summary(values)
    return (f"| {label} | {s['n']} | " + " | ".join(f"{s[k]:.{digits}f}" for k in ("mean", "p10", "p50", "p90"))
            + " |")


QUANTILE_HEAD = ["| figure | n | mean | p10 | median | p90 |", "|---|---|---|---|---|---|"]


def _image(pictures: dict[str, tuple[str, str]], name: str) -> list[str]:
    if name not in pictures:
        return []
    path, caption = pictures[name]
    return ["", f"![{caption}]({path})"]


REPO_PLACEHOLDER = "ORG/NAME"  # `simulforge publish` puts the repo id here


def _load_section(configs, splits, langs, build) -> list[str]:
    lines = ["## Configs and how to load", "",
             "Every config loads with `datasets` alone. Pin this build with its revision on the hub:", "",
             "```python", "import datasets", "", f'REPO = "{REPO_PLACEHOLDER}"  # the hub repo, or the path of a local copy',
             f'BUILD = "build-{build}"  # this dataset version', "```", ""]
    for name in configs:
        if not splits.get(name):
            continue
        module = CONFIGS[name]
        lines += [f"### `{name}`", "", f"One row is {module.ROW}.", "",
                  *columns.table(configs[name], module.COLUMNS), "",
                  "```python", f'ds = datasets.load_dataset(REPO, "{name}", revision=BUILD)',
                  f'row = ds["{splits[name][0]}"][0]', module.USAGE.format(lang=langs[0]), "```", ""]
    return lines


# Run as it stands by the tests, on a real build: keep it working.
RECIPE = Template('''import torch
from torch.utils.data import DataLoader

LANG = "$lang"  # one language pair, en-$lang: keep the rows that have it
ds = datasets.load_dataset(REPO, "$config", split="train", revision=BUILD)
ds = ds.filter(lambda t: t[LANG] is not None, input_columns="$column")  # reads no audio


def collate(rows):
    """A padded batch. `datasets` gives each clip as a torchcodec AudioDecoder, which the default
    collate cannot stack: decode, pad on time, keep the texts as lists."""
    clips = [row["audio"].get_all_samples().data for row in rows]  # float32 (channels, samples)
    lengths = torch.tensor([clip.shape[-1] for clip in clips])
    audio = torch.zeros(len(clips), clips[0].shape[0], int(lengths.max()))
    for i, clip in enumerate(clips):
        audio[i, :, : clip.shape[-1]] = clip
    return {"audio": audio, "lengths": lengths, "id": [row["id"] for row in rows],
            "source": [row["source_text"] for row in rows], "target": [row["$column"][LANG] for row in rows]}


loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate, num_workers=2)
batch = next(iter(loader))  # audio (8, 1, samples) at $rate Hz, zero-padded; lengths (8,)''')


def recipe(config: str, lang: str, rate: int) -> str:
    """The card's DataLoader example for an audio config with source texts (`offline`, `simulst`)."""
    return RECIPE.substitute(config=config, lang=lang, column=CONFIGS[config].LANGUAGE_COLUMN, rate=rate)


def _audio_rate(features: datasets.Features) -> int:
    audio = features.get("audio")
    return getattr(audio, "sampling_rate", None) or 16000


def _training_section(configs, splits, langs) -> list[str]:
    present = [name for name in configs if splits.get(name)]
    lines = ["## Training with PyTorch", "",
             "A row carries every language of the build; where it has no translation into a language, that "
             "language's field is null (see *Missing languages*). For one language pair, as MuST-C, CoVoST 2 and "
             "FLEURS ship them, filter on the config's language column:", "",
             "| config | language column | rows with en-" + langs[0] + " |", "|---|---|---|"]
    for name in present:
        column = CONFIGS[name].LANGUAGE_COLUMN
        lines.append(f'| `{name}` | `{column}` | `ds.filter(lambda t: t["{langs[0]}"] is not None, '
                     f'input_columns="{column}")` |')
    audio = next((c for c in ("simulst", "offline") if c in present), None)
    if audio:
        lines += ["", f"A `DataLoader` over the `{audio}` config for one language pair, with a collate function "
                  "for the audio column:", "", "```python", recipe(audio, langs[0], _audio_rate(configs[audio])),
                  "```", "",
                  "With `streaming=True` the same filter and collate function work on the `IterableDataset` "
                  "(shuffle it with `ds.shuffle(buffer_size=...)` instead of the loader). The `conversations` "
                  "audio has one channel per microphone, so the same collate gives (batch, channels, samples)."]
    return lines + [""]


def _tokens_section(configs, splits, langs, stats, about: provenance.About | None) -> list[str]:
    present = [name for name in configs if splits.get(name)]
    lines = ["## Special tokens, missing languages and the embedding", ""]
    tokens = []
    if "simulmt" in present:
        read, write = (t.replace("|", "\\|") for t in (simulmt.END_OF_READ, simulmt.END_OF_WRITE))  # in a table
        tokens += [f"| `{read}` | `simulmt` `text`, `offline` | ends a read: the source chunk before it has "
                   "been read, its translation follows |",
                   f"| `{write}` | `simulmt` `text`, `offline` | ends a write: the translation of that chunk is "
                   "done, the next chunk is read |"]
    if "conversations" in present:
        speaker = (about.speaker_tokens if about and about.speaker_tokens else {"SELF": "<SELF>", "OTHER": "<OTHER>"})
        order = ("at each change of speaker, words by when they end" if not about or about.sot_mode != "utterance"
                 else "before each utterance, utterances by start time")
        tokens += [f"| `{speaker['SELF']}` | `conversations` `sot_text`, `sot_translation` | what follows is said by "
                   f"SELF, who wears the microphone array; placed {order} |",
                   f"| `{speaker['OTHER']}` | `conversations` `sot_text`, `sot_translation` | what follows is said "
                   "by OTHER, the conversation partner |"]
    if tokens:
        lines += ["### Special tokens", "", "They are plain text inside the string columns: add them to "
                  "your tokenizer as special tokens so that each stays one token.", "", "| token | in | meaning |",
                  "|---|---|---|", *tokens, ""]
    lines += ["### Missing languages", "",
              "Per-language columns are structs with a field for every language of the build (" +
              ", ".join(f"`{lang}`" for lang in langs) + "), so every shard has the same schema. A language an "
              "utterance lacks is **null** in that field: never an empty string, never a missing key. A latency "
              "level a `simulst` utterance lacks is null too. *Size* counts the rows that carry each language; "
              "*Training with PyTorch* shows the filter for one language pair.", ""]
    teacher = stats.get("embedding_teacher")
    if teacher:
        lines += ["### Embedding", "",
                  f"`embedding` (in `offline` and `simulst`) is `{teacher['name']}`'s sentence embedding of "
                  f"`source_text`: {teacher['dim']} float32 values, L2-normalised to length 1 (so a dot product is a "
                  f"cosine), computed with the input prefix `{teacher['prefix']!r}` as the teacher's authors advise "
                  "for symmetric tasks, where a translation embedded the same way lands near its source. Only the "
                  "English source is embedded. A text the teacher maps to a zero or non-finite vector is rejected "
                  "(`bad_embedding`), never published.", ""]
    return lines


def _size_section(configs, splits, stats, figures: plots.Figures, langs) -> list[str]:
    lines = ["## Size", "", "Rows per split; per language, the rows that carry that language (a multi-way row "
             "carries several) and their hours of audio.", ""]
    for name in configs:
        if not splits.get(name):
            continue
        published = stats["published"].get(name, {"rows": {}, "audio_hours": {}})
        audio = bool(published["audio_hours"])
        lines += [f"### `{name}`", "", "| split | rows |" + (" audio hours |" if audio else "")
                  + "".join(f" {lang} |" for lang in langs), "|---|---|" + ("---|" if audio else "") + "---|" * len(langs)]
        for split in splits[name]:
            per_lang = figures.languages.get(name, {}).get(split, {})
            cells = []
            for lang in langs:
                n, seconds = per_lang.get(lang, (0, 0.0))
                cells.append(f"{n} rows, {_hours(seconds)} h" if audio else f"{n} rows")
            hours = f" {published['audio_hours'].get(split, 0.0):.3f} |" if audio else ""
            lines.append(f"| {split} | {published['rows'].get(split, 0)} |{hours} " + " | ".join(cells) + " |")
        lines.append("")
    return lines


COMMON_VOICE_CITATION = """@inproceedings{ardila-etal-2020-common,
  title = {Common Voice: A Massively-Multilingual Speech Corpus},
  author = {Ardila, Rosana and Branson, Megan and Davis, Kelly and Kohler, Michael and Meyer, Josh and
            Henretty, Michael and Morais, Reuben and Saunders, Lindsay and Tyers, Francis and Weber, Gregor},
  booktitle = {Proceedings of the Twelfth Language Resources and Evaluation Conference},
  year = {2020},
  pages = {4218--4222},
  address = {Marseille, France},
  publisher = {European Language Resources Association},
  url = {https://aclanthology.org/2020.lrec-1.520}
}"""
COMMON_VOICE_RULE = "You agree to not attempt to determine the identity of speakers in the Common Voice dataset."


def _sources(corpora: dict[str, str], about: provenance.About | None) -> list[provenance.Source]:
    """The sources as `about` records them, or as the configured licenses alone (a card rendered without)."""
    if about is not None:
        return about.sources
    return [provenance.Source(corpus=c, path="", license=lic, configured_license=lic, synthesized=False, found="")
            for c, lic in corpora.items()]


def _sources_section(sources: list[provenance.Source], license_: str, about: provenance.About | None) -> list[str]:
    lines = ["## Sources, licenses and citations", ""]
    synthesized = [s for s in sources if s.synthesized]
    if synthesized:
        demo = about.demo if about else {}
        settings = ", ".join(f"{k} {v}" for k, v in demo.items() if k in ("seed", "scale", "sentences", "rounds"))
        which = "All audio" if len(synthesized) == len(sources) else \
            f"The audio of {', '.join(_title(s.corpus) for s in synthesized)}"
        lines += [f"**{which} in this build is synthesized.** "
                  "It comes from simulforge's demo corpora (`simulforge demo-data`"
                  + (f"; {settings}" if settings else "") + "): English sentences with German and Spanish "
                  "translations written for simulforge, spoken by espeak-ng voices and laid out as the real corpora "
                  "ship. None of it is from those corpora, so their licenses do not apply: the texts are under "
                  f"simulforge's license ({LICENSE_NAMES[provenance.DEMO_LICENSE]}), and espeak-ng's license "
                  "(GPL-3.0-or-later) covers the program, not the speech it produces.", ""]
    lines += ["| corpus | license | read from | found | release named in the layout |", "|---|---|---|---|---|"]
    for s in sources:
        title = _title(s.corpus) + (" layout, synthesized" if s.synthesized else "")
        lic = f"{LICENSE_NAMES.get(s.license, s.license)} (`{s.license}`)"
        release = ("— (demo)" if s.synthesized else ", ".join(f"`{r}`" for r in s.releases)
                   or "none stated: record which release you downloaded")
        lines.append(f"| {title} | {lic} | `{s.path}` | {s.found or '—'} | {release} |")
    if about and about.input:
        lines += ["", f"Input folder: `{about.input}`."]
    if len(sources) > 1 and len({s.license for s in sources}) > 1:
        terms = (f"the most restrictive terms of its sources: **{LICENSE_NAMES[license_]}**"
                 if license_ in LICENSE_NAMES else "terms that cannot be ranked: each source's own terms apply")
        lines += ["", f"This build mixes corpora, so it is offered under {terms}."]
    restricted = [s for s in sources if provenance.no_derivatives(s.license)]
    if restricted:
        lines += ["", f"{', '.join(_title(s.corpus) for s in restricted)}: NoDerivatives terms cover adapted material "
                  "such as the chunked, aligned and simulated data here. Sharing this build needs the rights "
                  "holder's permission (`simulforge publish` asks you to confirm it), and training on it must fit "
                  "those terms."]
    covost = [s for s in sources if s.corpus == "covost" and not s.synthesized]
    if covost:
        lines += ["", "CoVoST 2's audio and transcripts are Common Voice's (CoVoST 2 uses Common Voice 4): cite Common "
                  f"Voice too, and keep its rule: *{COMMON_VOICE_RULE}* Recent Common Voice releases add terms of "
                  "their own (such as against re-hosting the dataset): check those of the release you downloaded "
                  "before sharing this build."]
    cited = [s.corpus for s in sources if not s.synthesized and s.corpus in CORPORA]
    if cited:
        lines += ["", "Please cite the corpora you use:", ""]
        for c in cited:
            lines += [f"{_title(c)}:", "", "```bibtex", CORPORA[c].CITATION, "```", ""]
        if covost:
            lines += ["Common Voice:", "", "```bibtex", COMMON_VOICE_CITATION, "```", ""]
    return lines + [""]


def _uses_section(sources: list[provenance.Source], langs: list[str], synthesized: bool) -> list[str]:
    lines = ["## Uses", "", "### Intended use", "",
             f"Training and evaluating English→{', '.join(langs)} speech translation, simultaneous (streaming) and "
             "offline, and the models around it: read/write policies (`simulst` `labels`, `simulmt` `text`), speech "
             "recognition, simultaneous text translation, speaker-attributed multi-talker recognition and "
             "translation on simulated conversations, and speech encoders distilled toward the text `embedding`.", ""]
    if synthesized:
        lines += ["This build's speech is synthesized: use it to test pipelines, trainers and evaluators end to "
                  "end, not to train models for real speech or to report results.", ""]
    lines += ["### Out-of-scope use", "",
              "- Identifying, tracking or profiling speakers from their voices or speaker ids.",
              "- Treating the chunks, word times and crossing rates as human-verified: they are machine-made "
              "(see *Bias, risks and limitations*).",
              "- Claiming far-field or real-conversation performance from the simulated `conversations` alone.",
              "- Uses a source's license does not allow, such as commercial use of NonCommercial data.", ""]
    return lines


DOMAINS = {"mustc": "TED talks (prepared public speaking)",
           "covost": "Common Voice read sentences (crowd-sourced read speech; accents and genders unevenly covered)",
           "fleurs": "read Wikipedia sentences (FLoRes)"}


def _limits_section(sources: list[provenance.Source], stats, langs: list[str]) -> list[str]:
    real = [s for s in sources if not s.synthesized]
    domains = "; ".join(f"{_title(s.corpus)}: {DOMAINS.get(s.corpus, 'see its own card')}" for s in real)
    lines = ["## Bias, risks and limitations", "",
             f"- English is the only source language; targets: {', '.join(langs)}. Coverage is uneven: see "
             "*Multi-way coverage*."]
    if domains:
        lines.append(f"- Domains: {domains}. Models trained here inherit their sources' speakers, topics and "
                     "recording conditions.")
    if len(real) < len(sources):
        lines.append("- Synthesized speech (espeak-ng) is far cleaner and more regular than human speech.")
    align = stats.get("align", {})
    measured = (align.get("error_ms") or {}).get("boundaries")
    lines += ["- Chunks come from automatic word alignments (eflomal, or an LLM with `segment.backend: llm`) and "
              "word times from an automatic forced aligner: they contain errors. "
              + ("The word-time error against true times is under *Data quality*." if measured else
                 "Their error was not measured on this input (no true word times)."),
              "- Chunk translations are spans of the corpus's reference translation, which was made offline: they "
              "are not what a human simultaneous interpreter would say.",
              "- `conversations` are simulated: utterances of different recordings and speakers joined into turns, "
              "shoebox rooms (image-source model), diffuse pink noise. They are not natural dialogue.",
              "- Rejected input is left out (see *Rejected records*), which may skew what remains.", ""]
    return lines


def _personal_section(sources: list[provenance.Source]) -> list[str]:
    lines = ["## Personal and sensitive information", ""]
    real = [s for s in sources if not s.synthesized]
    if not real:
        return lines + ["No real person's voice or data: the speech is synthesized by espeak-ng and the texts were "
                        "written for simulforge. `speaker` holds made-up ids.", ""]
    lines += ["Voices are personal data: a recording can identify its speaker. simulforge adds no personal "
              "information; `speaker` holds the corpora's own ids, which are pseudonymous, never names:", ""]
    notes = {"mustc": "MuST-C: TED talks, public recordings of their named speakers; the id is MuST-C's per-talk id.",
             "covost": f"CoVoST 2: Common Voice volunteers; the id is their hashed `client_id`. *{COMMON_VOICE_RULE}*",
             "fleurs": "FLEURS: readers recorded for it; FLEURS names no speakers, so the id is the recording's own."}
    lines += [f"- {notes[s.corpus]}" for s in real if s.corpus in notes]
    return lines + ["", "The transcripts and translations are the corpora's; `embedding` encodes the text, not the "
                        "voice.", ""]


def _coverage_section(stats, figures: plots.Figures, langs) -> list[str]:
    lines = ["## Multi-way coverage", "", "Source clips per corpus after the join, and how many have each "
             "translation:", "", "| corpus | clips | " + " | ".join(langs) + " |", "|---|---|" + "---|" * len(langs)]
    for corpus, c in stats["coverage"].items():
        cells = [str(c.get(lang, 0)) if lang not in c.get("not_in_corpus", []) else "not in corpus" for lang in langs]
        lines.append(f"| {_title(corpus)} | {c.get('clips', 0)} | " + " | ".join(cells) + " |")
    complete, total = figures.all_languages
    if total and len(langs) > 1:
        lines += ["", f"{complete} of {total} published utterances carry every language ({', '.join(langs)})."]
    return lines + [""]


def _rejects_section(stats) -> list[str]:
    lines = ["## Rejected records", "", "Every input is published or rejected with a reason and a detail "
             "(`rejected.jsonl`); per stage:", "", "| stage | in | out | rejected | reasons |", "|---|---|---|---|---|"]
    for stage, e in stats["stages"].items():
        reasons = ", ".join(f"{k}: {v}" for k, v in e["rejected"].items()) or "—"
        lines.append(f"| {stage} | {e['in']} | {e['out']} | {e['rejected_total']} | {reasons} |")
    return lines + [""]


def _quality_section(stats, figures: plots.Figures, pictures, sections, levels: list[str] = ()) -> list[str]:
    lines = ["## Data quality", ""]
    if figures.durations:
        lines += ["### Utterances", "", *QUANTILE_HEAD, _quantile_row("duration (s)", figures.durations),
                  *_image(pictures, "durations"), ""]
    for section in sections:
        lines += [section.rstrip(), ""]
    lines += [*_image(pictures, "monotonicity"), ""]
    if plots.level_order(figures.chunk_words, stats, levels):
        lines += ["### Chunk length", "", "Source words per chunk, and seconds of speech per chunk where the "
                  "`simulst` config gives chunk end times:", "", *QUANTILE_HEAD]
        for level in plots.level_order(figures.chunk_words, stats, levels):
            lines.append(_quantile_row(f"{level}: words per chunk", figures.chunk_words[level]))
        for level in plots.level_order(figures.chunk_seconds, stats, levels):
            lines.append(_quantile_row(f"{level}: seconds per chunk", figures.chunk_seconds[level]))
        lines += [*_image(pictures, "chunk_length"), ""]
    align = stats.get("align")
    if align:
        u = align["utterances"]
        lines += ["### Forced alignment", "", f"{u['out']} of {u['in']} utterances aligned, {align['words']} words."]
        err = align.get("error_ms")
        if err and err.get("boundaries"):
            lines.append(f"Word-boundary error against the true word times: mean {err['mean']} ms, median "
                         f"{err['p50']} ms, p90 {err['p90']} ms over {err['boundaries']} boundaries in "
                         f"{err['clips']} clips.")
        else:
            lines.append("Alignment error was not measured (no true word times for this input).")
        lines.append("")
    if figures.rooms.get("rt60_s"):
        lines += ["### Conversations", "", "Simulated rooms, background noise and turn overlap per conversation:",
                  "", *QUANTILE_HEAD, _quantile_row("RT60 (s)", figures.rooms["rt60_s"]),
                  _quantile_row("SNR (dB)", figures.rooms["snr_db"], 1),
                  _quantile_row("overlap ratio", figures.rooms["overlap_ratio"], 3), *_image(pictures, "conversations"),
                  ""]
    return lines


def _reproducibility(about: provenance.About | None, run: dict[str, Any]) -> list[str]:
    lines = ["### Reproducibility", "",
             f"Running `simulforge curate` again on the same input with the same config (hash `{run['config_hash']}`) "
             "and the same simulforge and package versions rebuilds these shards byte for byte, so the same build "
             "id, with or without the caches of `work_dir`: every random choice is seeded (by `seed` and the "
             "record id; the conversations by `simulate.seed`), and eflomal, which seeds itself from "
             "`/dev/urandom`, is run with a seed made from the corpus it aligns (two builds of the demo corpora "
             "with fresh work dirs give identical shards in every config; the tests check `simulst` and "
             "`simulmt`). Not covered:"]
    if about is not None and about.segment_backend == "llm":
        lines.append("- This build was segmented by an LLM (`segment.backend: llm`): its answers depend on the "
                     "server; only a run that reads the same answer cache (`segment.llm.cache_dir`) gets the same "
                     "chunks.")
    else:
        lines.append("- `segment.backend: llm`: LLM answers depend on the server; only the answer cache makes "
                     "them repeat.")
    if about is not None and about.align_backend == "mfa":
        lines.append("- This build's word times come from the Montreal Forced Aligner (`align.backend: mfa`), whose "
                     "training is not seeded by simulforge: they are not checked to repeat.")
    lines += ["- Other versions of the pinned packages (`requirements.lock`: eflomal, numba, torch, "
              "pyroomacoustics, ...) or another CPU may change floating-point results, hence chunk cuts, word "
              "times and the build id.", ""]
    return lines


def render(configs: dict[str, datasets.Features], stats: dict[str, Any], *, splits: dict[str, list[str]],
           langs: list[str], corpora: dict[str, str], build_info: dict[str, str], build: str,
           figures: plots.Figures, pictures: dict[str, tuple[str, str]], sections: list[str] = (),
           about: provenance.About | None = None) -> str:
    """The card's text. `splits`: the splits each config has shards for; `pictures`: plot name ->
    (relative path, caption); `sections`: markdown from stages, shown under data quality; `about`:
    the input's provenance (without it, the configured licenses stand for the sources)."""
    sources = _sources(corpora, about)
    license_ = most_restrictive([s.license for s in sources])
    synthesized = bool(sources) and all(s.synthesized for s in sources)
    head = yaml.safe_dump(header(configs, splits, stats, langs, license_, build, about), sort_keys=False,
                          allow_unicode=True)
    run = stats["run"]
    kind = "Synthesized demo data in the layouts of" if synthesized else "Multi-way speech translation data from"
    lines = [
        "---", head.rstrip(), "---", "",
        f"# simulforge: English → {', '.join(langs)} simultaneous speech translation", "",
        f"{kind} {', '.join(_title(s.corpus) for s in sources)}, curated by "
        f"simulforge {run['simulforge']} into the configs {', '.join(f'`{c}`' for c in configs if splits.get(c))}.",
        "",
        *(["> **Synthesized speech.** This build was made from simulforge's demo corpora: espeak-ng voices reading "
           "sentences written for simulforge. It is for testing, not for training real models (see *Sources*).", ""]
          if synthesized else []),
        f"**Dataset version: build `{build}`**, a hash of every shard's bytes and of the config hash "
        f"`{run['config_hash']}`: any change to the data gives a new build. On the hub every build has its own "
        f"revision `build-{build}` (a tag, or a branch when the default branch holds another build), so shards "
        "of two builds are never mixed.", "",
        *_load_section(configs, splits, langs, build),
        *_training_section(configs, splits, langs),
        *_tokens_section(configs, splits, langs, stats, about),
        *_size_section(configs, splits, stats, figures, langs),
        *_sources_section(sources, license_, about),
        *_uses_section(sources, langs, synthesized),
        *_limits_section(sources, stats, langs),
        *_personal_section(sources),
        *_coverage_section(stats, figures, langs),
        *_rejects_section(stats),
        *_quality_section(stats, figures, pictures, sections, about.levels if about else ()),
        "## How it was built", "",
        f"- dataset version: `build {build}`",
    ]
    lines += [f"- {k}: `{v}`" for k, v in build_info.items()]
    fixes = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats.get("fixes", {}).items())
    if fixes:
        lines.append(f"- mended rather than rejected (records; each row lists its own in `fixes`): {fixes}")
    lines += ["", *_reproducibility(about, run)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip("\n") + "\n"  # absent sections leave no gaps


def write(root: str, configs: dict[str, datasets.Features], stats: dict[str, Any], *, build: str, langs: list[str],
          corpora: dict[str, str], build_info: dict[str, str], sections: list[str] = (),
          about: provenance.About | None = None) -> None:
    """Read the figures of the shards under `root`, save the plots beside the card and write README.md
    for build `build`. `about`: the input's provenance (`provenance.about(settings, tasks)`)."""
    shard_map = find_shards(root)
    figures = plots.collect(shard_map, langs, CONFIGS)
    pictures = plots.draw(figures, stats, root, about.levels if about else ())
    text = render(configs, stats, splits={c: list(s) for c, s in shard_map.items()}, langs=langs, corpora=corpora,
                  build_info=build_info, build=build, figures=figures, pictures=pictures, sections=sections,
                  about=about)
    with files.open_write(files.join(root, "README.md")) as f:
        f.write(text.encode())


def for_repo(text: str, repo_id: str) -> str:
    """The card as published to `repo_id`: its loading examples name the repo instead of the placeholder."""
    return text.replace(f'REPO = "{REPO_PLACEHOLDER}"  # the hub repo, or the path of a local copy',
                        f'REPO = "{repo_id}"  # or the path of a local copy', 1)
