"""The dataset card (README.md): YAML header that `datasets` reads, then how the data was built."""

from __future__ import annotations

from typing import Any

import datasets
import yaml

from .. import __version__

# Most restrictive first: a build that mixes corpora is offered under the first that applies.
LICENSE_ORDER = ["cc-by-nc-nd-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-4.0", "cc-by-sa-4.0", "cc-by-4.0", "cc0-1.0"]
CORPUS_NAMES = {"mustc": "MuST-C", "covost": "CoVoST 2", "fleurs": "FLEURS"}


def size_category(n: int) -> str:
    for limit, name in [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")]:
        if n < limit:
            return name
    return "n>1M"


def most_restrictive(licenses: list[str]) -> str:
    known = [lic for lic in LICENSE_ORDER if lic in licenses]
    return known[0] if known else (licenses[0] if licenses else "other")


def header(configs: dict[str, datasets.Features], stats: dict[str, Any], langs: list[str], license_: str) -> dict:
    rows = stats["published"]
    total = sum(n for c in rows.values() for n in c["rows"].values())
    return {
        "language": ["en", *langs],
        "license": license_,
        "task_categories": ["automatic-speech-recognition", "translation"],
        "size_categories": [size_category(total)],
        "configs": [
            {"config_name": name, "data_files": [
                {"split": split, "path": f"data/{name}/{split}-*"} for split in rows.get(name, {}).get("rows", {})
            ]}
            for name in configs
        ],
        "dataset_info": [
            {"config_name": name, "features": features._to_yaml_list()}
            for name, features in configs.items()
        ],
    }


def render(configs: dict[str, datasets.Features], stats: dict[str, Any], *, langs: list[str],
           corpora: dict[str, str], build_info: dict[str, str], sections: list[str] = ()) -> str:
    license_ = most_restrictive(list(corpora.values()))
    head = yaml.safe_dump(header(configs, stats, langs, license_), sort_keys=False, allow_unicode=True)
    lines = [
        "---", head.rstrip(), "---", "",
        "# simulforge dataset", "",
        f"Multi-way English → {', '.join(langs)} speech translation data curated by simulforge {__version__}.",
        "",
        "## How to load", "",
    ]
    for name in configs:
        lines += ["```python", "import datasets", f'ds = datasets.load_dataset("<this folder or repo>", "{name}")',
                  "```", ""]
    lines += ["## Sources and licenses", "", "| corpus | license |", "|---|---|"]
    lines += [f"| {CORPUS_NAMES.get(c, c)} | {lic} |" for c, lic in corpora.items()]
    lines += ["", f"A build that mixes corpora is offered under the most restrictive terms: **{license_}**.", ""]
    lines += ["## Rows", "", "| config | split | rows | audio hours |", "|---|---|---|---|"]
    for name, p in stats["published"].items():
        for split, n in p["rows"].items():
            lines.append(f"| {name} | {split} | {n} | {p['audio_hours'].get(split, 0):.3f} |")
    lines += ["", "## Multi-way coverage", "", "| corpus | clips | " + " | ".join(langs) + " |",
              "|---|---|" + "---|" * len(langs)]
    for corpus, c in stats["coverage"].items():
        cells = [str(c.get(lang, 0)) if lang not in c.get("not_in_corpus", []) else "not in corpus" for lang in langs]
        lines.append(f"| {CORPUS_NAMES.get(corpus, corpus)} | {c.get('clips', 0)} | " + " | ".join(cells) + " |")
    lines += ["", "## Rejected records", "", "Every input is published or rejected with a reason "
              "(`rejected.jsonl`); per stage:", "", "| stage | in | out | rejected | reasons |", "|---|---|---|---|---|"]
    for stage, e in stats["stages"].items():
        reasons = ", ".join(f"{k}: {v}" for k, v in e["rejected"].items()) or "—"
        lines.append(f"| {stage} | {e['in']} | {e['out']} | {e['rejected_total']} | {reasons} |")
    for section in sections:
        lines += ["", section.rstrip()]
    lines += ["", "## How it was built", ""]
    lines += [f"- {k}: `{v}`" for k, v in build_info.items()]
    return "\n".join(lines) + "\n"
