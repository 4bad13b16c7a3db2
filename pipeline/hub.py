"""Publishing a curated folder to the Hugging Face Hub: the checks, then the upload.

`check` refuses a folder that is not exactly one whole build: every config in the card has
its whole shard sets, every shard's schema is the card's features and `datasets` can read
it, the rows agree with stats.json, the shards hash to the card's build id, and nothing else
is in the folder.

`upload` keeps builds apart. A branch receives a build only when it is empty or already
holds that build (then the upload resumes: files already committed are skipped). When the
default branch holds another build, the new one goes to a branch `build-<id>` created from
the repository's first commit, and the default branch is left as it is; an explicit
`--revision` that holds another build is refused. A finished upload is tagged
`build-<id>`, so every build is loadable by that revision. The client commits files in path
order, so the card (README.md, which names the build) lands with the first commit: a branch
left by an interrupted upload names its build, and the re-run resumes it. The uploaded card
names the repo in its loading examples where the local one has the ORG/NAME placeholder.

The token comes from `HF_TOKEN` or the saved login (`huggingface_hub.get_token`), is given to
the client only, and is masked in every log record and error message while we run.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import datasets
import pyarrow.parquet as pq

from ..transforms.publish import parse_shard, shard_name
from . import card, plots
from .output import MARKER

ROOT_FILES = ("README.md", "stats.json", "rejected.jsonl", "curate.yaml")  # curate.yaml: the resolved settings
REQUIRED = ("README.md", "stats.json")
NOT_A_BUILD = "files that are not a simulforge build"
DEFAULT_BRANCH = "main"


class PublishError(Exception):
    """Why a folder cannot be published (or an upload failed), in words the user can act on."""


@dataclass
class Manifest:
    """A checked folder: what would be uploaded."""

    folder: str
    build: str
    card: dict
    files: list[tuple[str, int]]  # relative path, bytes
    rows: dict[str, dict[str, int]]  # config -> split -> rows
    shards: dict[str, dict[str, int]]  # config -> split -> shard files


@dataclass
class Published:
    repo_id: str
    revision: str  # the branch (or tag) the build is on
    commit: str
    note: str  # what happened, for the user


# -- Checks ------------------------------------------------------------------------------------


def _walk(folder: str) -> list[str]:
    out = []
    for top, dirs, names in os.walk(folder):
        dirs.sort()
        out += [os.path.relpath(os.path.join(top, n), folder).replace(os.sep, "/") for n in sorted(names)]
    return out


def _schema_difference(actual, expected) -> str:
    have, want = {f.name: f.type for f in actual}, {f.name: f.type for f in expected}
    parts = [f"missing column {n}" for n in want if n not in have]
    parts += [f"extra column {n}" for n in have if n not in want]
    parts += [f"{n} is {have[n]} in the shard, {want[n]} in the card" for n in want if n in have and have[n] != want[n]]
    return "; ".join(parts) or "column order differs"


def _read(folder: str) -> tuple[list[str], str, dict, dict]:
    """The folder's files, card text, card header and stats; PublishError if it is no curated folder."""
    if not os.path.isdir(folder):
        raise PublishError(f"{folder}: no such folder")
    present = _walk(folder)
    missing = [name for name in REQUIRED if name not in present]
    if missing:
        raise PublishError(f"{folder} is not a curated folder: no {', '.join(missing)} (run `simulforge curate`)")
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
        text = f.read()
    try:
        head = card.front_matter(text)
        with open(os.path.join(folder, "stats.json"), encoding="utf-8") as f:
            stats = json.load(f)
    except ValueError as e:  # also json.JSONDecodeError
        raise PublishError(f"{folder}: {e}") from None
    return present, text, head, stats


def _check_split(folder: str, shards: list[str], expected, build: str | None) -> tuple[list[str], int]:
    """Problems with one split's shards (set, build, readability, schema) and the rows they hold."""
    problems, rows = _complete(shards), 0
    problems += [f"{p}: named for build {parse_shard(p)['build']}, the card is build {build}"
                 for p in shards if parse_shard(p) and parse_shard(p)["build"] != build]
    for p in shards:
        try:
            shard = pq.ParquetFile(os.path.join(folder, p))
        except Exception as e:  # a truncated or foreign file: say which and why
            problems.append(f"{p}: not a readable Parquet file ({e})")
            continue
        meta = shard.metadata
        rows += meta.num_rows
        if any(meta.row_group(i).num_rows == 0 for i in range(meta.num_row_groups)):
            # `datasets` reads a shard a row group at a time and fails on one of no rows.
            problems.append(f"{p}: holds a row group of no rows, which `datasets` cannot read (an empty "
                            "shard must have no row groups)")
        if expected is not None and not shard.schema_arrow.equals(expected):
            problems.append(f"{p}: schema differs from the card's features: "
                            f"{_schema_difference(shard.schema_arrow, expected)}")
    return problems, rows


def _check_counts(rows: dict[str, dict[str, int]], stats: dict) -> list[str]:
    problems = []
    published = stats.get("published", {})
    for config in sorted(set(rows) | set(published)):
        stated = published.get(config, {}).get("rows", {})
        for split in sorted(set(rows.get(config, {})) | {s for s, v in stated.items() if v}):
            have, want = rows.get(config, {}).get(split, 0), stated.get(split, 0)
            if have != want:
                problems.append(f"config {config}, split {split}: the shards hold {have} rows, stats.json says {want}")
    return problems


def check(folder: str) -> Manifest:
    """Check `folder` as one whole build; raise PublishError listing every problem found."""
    present, text, head, stats = _read(folder)
    problems: list[str] = []
    run = head.get("simulforge") or {}
    if not run.get("build"):
        problems.append("the card states no build id (simulforge.build): re-run `simulforge curate`")
    features = {i["config_name"]: i["features"] for i in head.get("dataset_info", [])}
    configs = {c["config_name"]: c.get("data_files", []) for c in head.get("configs", [])}
    if not configs:
        problems.append("the card lists no configs")
    for name in sorted(set(configs) ^ set(features)):
        problems.append(f"config {name} is in the card's {'configs' if name in configs else 'dataset_info'} only")

    listed = {p for p in present if p in ROOT_FILES or p == MARKER}
    listed |= {p for p in present if p.startswith(plots.PLOTS_DIR + "/") and f"]({p})" in text}
    rows: dict[str, dict[str, int]] = {}
    counts: dict[str, dict[str, int]] = {}
    for config, data_files in configs.items():
        expected = datasets.Features._from_yaml_list(features[config]).arrow_schema if config in features else None
        for entry in data_files:
            split, pattern = entry["split"], entry["path"]
            shards = [p for p in present if fnmatch.fnmatchcase(p, pattern) and p.endswith(".parquet")]
            if not shards:
                problems.append(f"config {config}, split {split}: no shards match {pattern}")
                continue
            found, n = _check_split(folder, shards, expected, run.get("build"))
            problems += found
            rows.setdefault(config, {})[split] = n
            counts.setdefault(config, {})[split] = len(shards)
            listed.update(shards)
    problems += _check_counts(rows, stats)

    stray = [p for p in present if p not in listed]
    if stray:
        shown = ", ".join(stray[:10]) + (f" and {len(stray) - 10} more" if len(stray) > 10 else "")
        problems.append(f"stray files that are not part of this build (remove them or re-run curate): {shown}")
    shard_paths = [os.path.join(folder, p) for p in present if p in listed and p.endswith(".parquet")]
    if run.get("build") and shard_paths:
        actual = card.build_id(shard_paths, run.get("config_hash", ""))
        if actual != run["build"]:
            problems.append(f"the shards hash to build {actual}, the card says {run['build']}: they are not the "
                            "shards the card was written for (re-run `simulforge curate`)")
    if problems:
        raise PublishError(f"{folder} is not ready to publish:\n" + "\n".join(f"  - {p}" for p in problems))
    return Manifest(folder=folder, build=run["build"], card=head, rows=rows, shards=counts,
                    files=[(p, os.path.getsize(os.path.join(folder, p))) for p in present if p != MARKER])


def _complete(paths: list[str]) -> list[str]:
    """Problems with a split's shard set: every index of `-NNNNN-of-MMMMM` present, one total."""
    found = {}
    for p in paths:
        m = parse_shard(p)
        if not m:
            return [f"{p}: not named <split>-NNNNN-of-MMMMM-<build>.parquet"]
        found[int(m["index"])] = int(m["count"])
    totals = set(found.values())
    if len(totals) > 1:
        return [f"{paths[0].rsplit('/', 1)[0]}: shards of different sets ({', '.join(map(str, sorted(totals)))} shards)"]
    total, m = totals.pop(), parse_shard(paths[0])
    return [f"{shard_name(m['config'], m['split'], i, total, m['build'])} is missing"
            for i in range(total) if i not in found]


# -- Upload ------------------------------------------------------------------------------------


@contextmanager
def _masked(secret: str) -> Iterator[None]:
    """Mask `secret` in every log record made meanwhile, whichever logger or handler takes it."""
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        message = record.getMessage()
        if secret in message:
            record.msg, record.args = message.replace(secret, "***"), None
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(make)


@contextmanager
def _as_published(m: Manifest, repo_id: str) -> Iterator[str]:
    """A folder holding what is uploaded: the card with `repo_id` in its loading examples (card.for_repo),
    and links to every other file of the build. The card is not part of the build id, and it is the
    same text at every try, so a resumed upload finds it already there."""
    with tempfile.TemporaryDirectory(prefix="simulforge-publish-") as tmp:
        for path, _ in m.files:
            src = os.path.join(os.path.abspath(m.folder), *path.split("/"))
            dest = os.path.join(tmp, *path.split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if path == "README.md":
                with open(src, encoding="utf-8") as f:
                    text = card.for_repo(f.read(), repo_id)
                with open(dest, "w", encoding="utf-8") as f:
                    f.write(text)
            else:
                os.symlink(src, dest)
        yield tmp


def _holds(api, repo_id: str, branch: str) -> str | None:
    """What `branch` holds: None (no such branch, or empty), a build id, or NOT_A_BUILD."""
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        names = api.list_repo_files(repo_id, repo_type="dataset", revision=branch)
    except RevisionNotFoundError:
        return None
    if set(names) <= {".gitattributes"}:
        return None
    if "README.md" not in names:
        return NOT_A_BUILD
    with tempfile.TemporaryDirectory() as cache:  # always the remote's current card, never a cached one
        path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=branch, cache_dir=cache)
        with open(path, encoding="utf-8") as f:
            text = f.read()
    try:
        return (card.front_matter(text).get("simulforge") or {}).get("build") or NOT_A_BUILD
    except ValueError:
        return NOT_A_BUILD


def _describe(held: str) -> str:
    return NOT_A_BUILD if held == NOT_A_BUILD else f"build {held}"


def upload(manifest: Manifest, repo_id: str, *, private: bool = False, revision: str | None = None,
           echo=print) -> Published:
    """Upload a checked folder (see the module docstring for where it goes)."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    with _masked(token):
        try:
            return _upload(manifest, repo_id, private=private, revision=revision, token=token, echo=echo)
        except PublishError:
            raise
        except Exception as e:  # the client's errors, with the token masked should any carry it
            raise PublishError(f"upload to {repo_id} failed: {type(e).__name__}: {e}".replace(token, "***")) from None


def _upload(m: Manifest, repo_id: str, *, private: bool, revision: str | None, token: str, echo) -> Published:
    from huggingface_hub import HfApi

    api = HfApi(token=token)  # the endpoint is the client's: huggingface.co, or HF_ENDPOINT
    tag = f"build-{m.build}"
    api.create_repo(repo_id, repo_type="dataset", private=private or None, exist_ok=True)
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    if revision is None and tag in {t.name for t in refs.tags}:
        commit = next(t.target_commit for t in refs.tags if t.name == tag)
        return Published(repo_id, tag, commit, f"build {m.build} is already published as tag {tag}; nothing uploaded")
    branch = revision or DEFAULT_BRANCH
    held = _holds(api, repo_id, branch)
    note = f"build {m.build} uploaded to {repo_id}@{branch}"
    if held not in (None, m.build):
        if revision:
            raise PublishError(
                f"{repo_id}@{branch} holds {_describe(held)}; this folder is build {m.build}. Uploading there "
                f"would mix the two: name a new branch with --revision, or leave it out to publish on branch {tag}")
        branch = tag
        other = _holds(api, repo_id, branch)
        if other not in (None, m.build):
            raise PublishError(f"{repo_id}@{branch} holds {_describe(other)}, not build {m.build}: remove that "
                               "branch on the hub, or publish with --revision NEW_BRANCH")
        note = (f"{repo_id}@{DEFAULT_BRANCH} holds {_describe(held)}, so build {m.build} went to branch {branch} "
                f"({DEFAULT_BRANCH} is unchanged)")
        echo(f"{repo_id}@{DEFAULT_BRANCH} holds {_describe(held)}: uploading build {m.build} to branch {branch}")
    if branch not in {b.name for b in refs.branches}:
        # From the first commit, so the new branch holds nothing of another build.
        root = api.list_repo_commits(repo_id, repo_type="dataset")[-1].commit_id
        api.create_branch(repo_id, branch=branch, revision=root, repo_type="dataset")
    with _as_published(m, repo_id) as folder:
        info = api.upload_folder(
            repo_id=repo_id, repo_type="dataset", folder_path=folder, revision=branch,
            allow_patterns=[p for p, _ in m.files],
            commit_message=f"simulforge build {m.build}",
            commit_description=f"Dataset version build {m.build}, uploaded by `simulforge publish`.",
        )
    if branch != tag:
        api.create_tag(repo_id, tag=tag, revision=info.oid, repo_type="dataset", exist_ok=True,
                       tag_message=f"simulforge build {m.build}")
    return Published(repo_id, branch, info.oid, note)
