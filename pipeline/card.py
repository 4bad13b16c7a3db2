"""The dataset card (README.md): where a trainer decides whether to use the data.

A YAML header that `datasets` and the Hub read (configs with their features, languages,
license, task and size categories, and the build id), then: the dataset version, how to load
each config, rows and hours per split and language, sources with their licenses and
citations, coverage of the multi-way join, rejects, data-quality figures with plots, and how
the data was built.

The build id is the dataset version: a hash of every shard's bytes and of the config hash, so
two builds share an id exactly when they publish the same data. `simulforge publish` hashes
the shards again to check that the card describes the shards beside it, and keeps builds
apart on the hub by this id.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import datasets
import yaml

from ..transforms import files
from ..transforms.publish import find_shards, shard_pattern, untagged
from ..transforms.readers import CORPORA
from . import plots
from .dataset_configs import CONFIGS

BUILD_ID_CHARS = 16

# Most restrictive first: a build that mixes corpora is offered under the first that applies.
LICENSE_ORDER = ["cc-by-nc-nd-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-4.0", "cc-by-sa-4.0", "cc-by-4.0", "cc0-1.0"]
LICENSE_NAMES = {"cc-by-nc-nd-4.0": "CC BY-NC-ND 4.0", "cc-by-nc-sa-4.0": "CC BY-NC-SA 4.0",
                 "cc-by-nc-4.0": "CC BY-NC 4.0", "cc-by-sa-4.0": "CC BY-SA 4.0", "cc-by-4.0": "CC BY 4.0",
                 "cc0-1.0": "CC0 1.0"}
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


def header(configs: dict[str, datasets.Features], splits: dict[str, list[str]], stats: dict[str, Any],
           langs: list[str], license_: str, build: str) -> dict:
    rows = stats["published"]
    largest = max((sum(p["rows"].values()) for p in rows.values()), default=0)
    run = stats["run"]
    return {
        "pretty_name": f"simulforge English→{', '.join(langs)} simultaneous speech translation",
        "language": ["en", *langs],
        "license": license_,
        "task_categories": ["automatic-speech-recognition", "translation"],
        "tags": ["speech-translation", "simultaneous-translation", "simulforge"],
        "size_categories": [size_category(largest)],
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
        "simulforge": {"build": build, "pipeline": run["simulforge"], "config_hash": run["config_hash"],
                       "git_commit": run["git_commit"]},
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


def _load_section(configs, splits, langs, build) -> list[str]:
    lines = ["## Configs and how to load", "",
             "Every config loads with `datasets` alone. Pin this build with its revision on the hub:", "",
             "```python", "import datasets", "", 'REPO = "ORG/NAME"  # the hub repo, or the path of a local copy',
             f'BUILD = "build-{build}"  # this dataset version', "```", ""]
    for name in configs:
        if not splits.get(name):
            continue
        columns = ", ".join(f"`{c}`" for c in configs[name])
        lines += [f"### `{name}`", "", f"One row is {CONFIGS[name].ROW}.", f"Columns: {columns}.", "",
                  "```python", f'ds = datasets.load_dataset(REPO, "{name}", revision=BUILD)',
                  f'row = ds["{splits[name][0]}"][0]', CONFIGS[name].USAGE.format(lang=langs[0]), "```", ""]
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


def _sources_section(corpora: dict[str, str], license_: str) -> list[str]:
    lines = ["## Sources, licenses and citations", "", "| corpus | license |", "|---|---|"]
    lines += [f"| {_title(c)} | {LICENSE_NAMES.get(lic, lic)} (`{lic}`) |" for c, lic in corpora.items()]
    if len(corpora) > 1:
        terms = (f"the most restrictive terms of its sources: **{LICENSE_NAMES[license_]}**"
                 if license_ in LICENSE_NAMES else "terms that cannot be ranked: each source's own terms apply")
        lines += ["", f"This build mixes corpora, so it is offered under {terms}."]
    if "nd" in license_.split("-"):
        lines += ["", "NoDerivatives terms cover adapted material such as the chunked, aligned and simulated data "
                  "here: check that your use is allowed before training on it."]
    lines += ["", "Please cite the corpora you use:", ""]
    for c in corpora:
        if c in CORPORA:
            lines += [f"{_title(c)}:", "", "```bibtex", CORPORA[c].CITATION, "```", ""]
    return lines


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


def _quality_section(stats, figures: plots.Figures, pictures, sections) -> list[str]:
    lines = ["## Data quality", ""]
    if figures.durations:
        lines += ["### Utterances", "", *QUANTILE_HEAD, _quantile_row("duration (s)", figures.durations),
                  *_image(pictures, "durations"), ""]
    for section in sections:
        lines += [section.rstrip()]
    lines += [*_image(pictures, "monotonicity"), ""]
    if plots.level_order(figures.chunk_words, stats):
        lines += ["### Chunk length", "", "Source words per chunk, and seconds of speech per chunk where the "
                  "`simulst` config gives chunk end times:", "", *QUANTILE_HEAD]
        for level in plots.level_order(figures.chunk_words, stats):
            lines.append(_quantile_row(f"{level}: words per chunk", figures.chunk_words[level]))
        for level in plots.level_order(figures.chunk_seconds, stats):
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


def render(configs: dict[str, datasets.Features], stats: dict[str, Any], *, splits: dict[str, list[str]],
           langs: list[str], corpora: dict[str, str], build_info: dict[str, str], build: str,
           figures: plots.Figures, pictures: dict[str, tuple[str, str]], sections: list[str] = ()) -> str:
    """The card's text. `splits`: the splits each config has shards for; `pictures`: plot name ->
    (relative path, caption); `sections`: markdown from stages, shown under data quality."""
    license_ = most_restrictive(list(corpora.values()))
    head = yaml.safe_dump(header(configs, splits, stats, langs, license_, build), sort_keys=False,
                          allow_unicode=True)
    run = stats["run"]
    lines = [
        "---", head.rstrip(), "---", "",
        f"# simulforge: English → {', '.join(langs)} simultaneous speech translation", "",
        f"Multi-way speech translation data from {', '.join(map(_title, corpora))}, curated by "
        f"simulforge {run['simulforge']} into the configs {', '.join(f'`{c}`' for c in configs if splits.get(c))}.",
        "",
        f"**Dataset version: build `{build}`**, a hash of every shard's bytes and of the config hash "
        f"`{run['config_hash']}`: any change to the data gives a new build. On the hub every build has its own "
        f"revision `build-{build}` (a tag, or a branch when the default branch holds another build), so shards "
        "of two builds are never mixed.", "",
        *_load_section(configs, splits, langs, build),
        *_size_section(configs, splits, stats, figures, langs),
        *_sources_section(corpora, license_),
        *_coverage_section(stats, figures, langs),
        *_rejects_section(stats),
        *_quality_section(stats, figures, pictures, sections),
        "## How it was built", "",
        f"- dataset version: `build {build}`",
    ]
    lines += [f"- {k}: `{v}`" for k, v in build_info.items()]
    fixes = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats.get("fixes", {}).items())
    if fixes:
        lines.append(f"- mended rather than rejected (records; each row lists its own in `fixes`): {fixes}")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"  # sections that are absent leave no gaps


def write(root: str, configs: dict[str, datasets.Features], stats: dict[str, Any], *, build: str, langs: list[str],
          corpora: dict[str, str], build_info: dict[str, str], sections: list[str] = ()) -> None:
    """Read the figures of the shards under `root`, save the plots beside the card and write README.md
    for build `build`."""
    shard_map = find_shards(root)
    figures = plots.collect(shard_map, langs, CONFIGS)
    pictures = plots.draw(figures, stats, root)
    text = render(configs, stats, splits={c: list(s) for c, s in shard_map.items()}, langs=langs, corpora=corpora,
                  build_info=build_info, build=build, figures=figures, pictures=pictures, sections=sections)
    with files.open_write(files.join(root, "README.md")) as f:
        f.write(text.encode())
