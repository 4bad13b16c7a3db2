"""`simulforge publish`: the dry-run checks on a curated folder, and the upload through the real
`huggingface_hub` client against a local stand-in for the Hub's HTTP API.

The stand-in answers the endpoints the client calls (repo creation, refs, tree, commits,
branches, tags, preupload, commit, file download) and keeps every revision's files in memory.
It asks for every file as a regular (inline) upload, so no Xet or LFS storage is involved;
the client's own multi-commit, resumable upload pipeline runs as it does against the Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import curate
from simulforge import publish
from simulforge.pipeline import card, output

TOKEN = "hf_fakeTokenThatMustNeverBePrinted0123"
REPO = "lab/simul-demo"


@pytest.fixture(scope="module")
def folder(demo_root, tmp_path_factory):
    """One curated folder for the module: offline only, the train split in two shards (so a
    missing shard leaves a set incomplete rather than empty)."""
    out = tmp_path_factory.mktemp("publish") / "out"
    curate(demo_root, out, overrides=["num_shards=0", "records_per_shard=25"])
    return out


@pytest.fixture
def copy(folder, tmp_path):
    dest = tmp_path / "out"
    shutil.copytree(folder, dest)
    return dest


def _files(root) -> dict[str, bytes]:
    """What an upload sends: every file but the build marker, which is for the local folder only, and
    the card naming the repo in its loading examples."""
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and p.name != output.MARKER}
    files["README.md"] = card.for_repo(files["README.md"].decode(), REPO).encode()
    return files


@pytest.fixture(scope="module")
def restricted(demo_root, tmp_path_factory):
    """A build of the demo corpora as real ones (no demo README.txt): MuST-C's CC BY-NC-ND applies."""
    raw = tmp_path_factory.mktemp("restricted") / "raw"
    shutil.copytree(demo_root, raw)
    (raw / "README.txt").unlink()
    curate(raw, raw.parent / "out", corpora=("mustc", "fleurs"))
    return raw.parent / "out"


def _shard(root, name: str):
    """data/offline/<name>-<build>.parquet: shard names carry the build id."""
    (path,) = (root / "data/offline").glob(f"{name}-*.parquet")
    return path


# -- Dry run -----------------------------------------------------------------------------------


def test_dry_run_lists_a_whole_build(folder, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)  # a dry run needs no token
    assert publish.main([str(folder), "--repo-id", REPO, "--dry-run"]) == 0
    out = capsys.readouterr().out
    build = card.front_matter((folder / "README.md").read_text())["simulforge"]["build"]
    assert f"build {build}" in out and "every check passed" in out and "nothing uploaded" in out
    stats = json.loads((folder / "stats.json").read_text())
    rows = stats["published"]["offline"]["rows"]
    assert f"train {rows['train']} rows in 2 shard(s)" in out and f"test {rows['test']} rows in 1 shard(s)" in out
    for path in _files(folder):
        assert path in out
    assert f"branch build-{build} if main holds another build" in out
    assert f'the uploaded README.md names the repo in its loading examples: REPO = "{REPO}"' in out
    assert "warning" not in capsys.readouterr().err  # demo data: synthesized, no license stands in the way


def _rewrite_duration_as_double(root):
    path = _shard(root, "train-00000-of-00002")
    table = pq.read_table(path)
    i = table.schema.get_field_index("duration")
    pq.write_table(table.set_column(i, pa.field("duration", pa.float64()), table["duration"].cast(pa.float64())), path)


def _append_an_empty_row_group(root):
    path = _shard(root, "test-00000-of-00001")
    table = pq.read_table(path)
    with pq.ParquetWriter(path, table.schema) as writer:
        writer.write_table(table)
        writer.write_table(table.slice(0, 0))


def _add_a_row_to_stats(root):
    stats = json.loads((root / "stats.json").read_text())
    stats["published"]["offline"]["rows"]["train"] += 1
    (root / "stats.json").write_text(json.dumps(stats))


def _leave_strays(root):
    (root / ".simulforge-staging-1").mkdir()
    (root / ".simulforge-staging-1/stats.sums.jsonl").write_text("[]\n")
    shutil.copy(_shard(root, "test-00000-of-00001"), root / "data/offline/old-00000-of-00001.parquet")


@pytest.mark.parametrize("damage, expected", [
    (lambda root: _shard(root, "train-00001-of-00002").unlink(),
     ["data/offline/train-00001-of-00002-", ".parquet is missing", "the shards hold"]),
    (_rewrite_duration_as_double,
     ["data/offline/train-00000-of-00002-", ".parquet: schema differs from the card's features: duration is double "
      "in the shard, float in the card"]),
    (_append_an_empty_row_group, ["test-00000-of-00001-", ".parquet: holds a row group of no rows"]),
    (_add_a_row_to_stats, ["config offline, split train: the shards hold"]),
    (_leave_strays, ["stray files", ".simulforge-staging-1/stats.sums.jsonl", "data/offline/old-00000-of-00001.parquet"]),
], ids=["missing-shard", "schema", "empty-row-group", "counts", "stray"])
def test_dry_run_refuses_a_damaged_folder(copy, capsys, damage, expected):
    damage(copy)
    assert publish.main([str(copy), "--repo-id", REPO, "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "is not ready to publish" in err
    for text in expected:
        assert text in err


def test_counts_disagree_with_stats_only_not_the_build(copy, capsys):
    _add_a_row_to_stats(copy)
    publish.main([str(copy), "--repo-id", REPO, "--dry-run"])
    err = capsys.readouterr().err
    assert "stats.json says" in err and "hash to build" not in err  # the shards themselves are intact



# -- The shards hash to the card's build id ----------------------------------------------------


def _change_one_value(root):
    """The first row's `duration` a little longer, the shard rewritten whole: still the card's schema,
    rows and name, so only the hash can tell."""
    path = _shard(root, "train-00000-of-00002")
    table = pq.read_table(path)
    i = table.schema.get_field_index("duration")
    durations = table["duration"].to_pylist()
    durations[0] += 0.5
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(durations, pa.float32())), path)


def _flip_one_byte(root):
    """One byte in the middle of the audio column's pages; the footer, so the metadata, is untouched."""
    path = _shard(root, "train-00000-of-00002")
    meta = pq.ParquetFile(path).metadata
    chunk = max((meta.row_group(0).column(i) for i in range(meta.num_columns)), key=lambda c: c.total_compressed_size)
    offset = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_change_one_value, _flip_one_byte], ids=["one-value", "one-byte"])
def test_dry_run_refuses_shards_that_do_not_hash_to_the_build(copy, capsys, damage):
    build = card.front_matter((copy / "README.md").read_text())["simulforge"]["build"]
    damage(copy)
    assert pq.ParquetFile(_shard(copy, "train-00000-of-00002")).metadata.num_rows > 0  # still a Parquet file
    assert publish.main([str(copy), "--repo-id", REPO, "--dry-run"]) == 1
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    # Names, schema, rows and counts are as the card says: the hash is the one problem.
    assert len(problems) == 1, err
    assert "the shards hash to build " in problems[0] and f", the card says {build}: they are not the shards" in problems[0]
    assert f"hash to build {build}" not in problems[0]


# -- A local stand-in for the Hub --------------------------------------------------------------


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # oid -> files
    log: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # oid -> (parent, title)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def commit(self, parent: str | None, files: dict[str, bytes], title: str) -> str:
        oid = hashlib.sha1(f"{parent}{title}{len(self.log)}".encode()).hexdigest()
        self.commits[oid], self.log[oid] = files, (parent, title)
        return oid

    def resolve(self, rev: str) -> str | None:
        return self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)

    def tree(self, rev: str) -> dict[str, bytes]:
        return self.commits[self.resolve(rev)]


class FakeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.repos: dict[str, Repo] = {}
        self.auth: list[tuple[str, str | None]] = []  # (path, Authorization header) of every request
        self.commit_paths: list[list[str]] = []  # files added by each accepted commit
        self.fail_commit: int | None = None  # refuse the Nth commit (1-based), as a dropped connection would
        self.reject_create_with: str | None = None  # an error body for repo creation

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def seed(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> None:
        repo = self.repos.setdefault(repo_id, Repo(private=False))
        root = repo.commit(None, {".gitattributes": b"*.parquet filter=lfs\n"}, "initial commit")
        repo.branches[branch] = repo.commit(root, {".gitattributes": b"*.parquet filter=lfs\n", **files}, "seed")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHub

    def log_message(self, *args):  # keep the test output for what the code under test prints
        pass

    def _send(self, status: int, body=b"", headers: dict | None = None, head_only: bool = False):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head_only:
            self.wfile.write(data)

    def _not_found(self, code: str, head_only=False):
        self._send(404, {"error": code}, {"X-Error-Code": code}, head_only)

    def _route(self, method: str):
        self.body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/api/agent-harnesses":  # the client's own telemetry, sent without a token
            return self._send(404, {"error": "not here"})
        self.server.auth.append((self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"error": "Invalid credentials"})
        path = urlparse(self.path).path
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if path == "/api/repos/create":
            return self._create(json.loads(self.body))
        if path == "/api/validate-yaml":
            content = json.loads(self.body)["content"]
            card.front_matter(content)
            return self._send(200, {"errors": [], "warnings": []})
        if parts[0] == "datasets" and "resolve" in parts:  # /datasets/ns/name/resolve/rev/path
            return self._resolve(f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:]), method == "HEAD")
        if parts[:2] == ["api", "datasets"]:
            repo_id, action, rest = f"{parts[2]}/{parts[3]}", (parts[4:] or ["revision"])[0], parts[5:] or ["main"]
            repo, self.repo_id = self.server.repos.get(repo_id), repo_id
            if repo is None:
                return self._not_found("RepoNotFound")
            return getattr(self, f"_{action}")(repo, "/".join(rest) if action != "tree" else rest[0])
        return self._send(404, {"error": f"no route {method} {path}"})

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")

    def _create(self, payload):
        if self.server.reject_create_with:
            return self._send(403, {"error": self.server.reject_create_with})
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.server.repos:
            return self._send(409, {"error": "You already created this dataset repo",
                                    "url": f"{self.server.url}/datasets/{repo_id}"})
        repo = self.server.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        repo.branches["main"] = repo.commit(None, {".gitattributes": b"*.parquet filter=lfs\n"}, "initial commit")
        return self._send(200, {"url": f"{self.server.url}/datasets/{repo_id}"})

    def _resolve(self, repo_id, rev, name, head_only):
        repo = self.server.repos.get(repo_id)
        if repo is None:
            return self._not_found("RepoNotFound", head_only)
        if repo.resolve(rev) is None:
            return self._not_found("RevisionNotFound", head_only)
        data = repo.tree(rev).get(name)
        if data is None:
            return self._not_found("EntryNotFound", head_only)
        self._send(200, data, {"ETag": f'"{_git_oid(data)}"', "X-Repo-Commit": repo.resolve(rev),
                               "Content-Type": "application/octet-stream"}, head_only)

    def _refs(self, repo, _):
        def refs(kind, items):
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in items.items()]

        self._send(200, {"branches": refs("heads", repo.branches), "tags": refs("tags", repo.tags), "converts": []})

    def _tree(self, repo, rev):
        if repo.resolve(rev) is None:
            return self._not_found("RevisionNotFound")
        self._send(200, [{"type": "file", "path": p, "size": len(d), "oid": _git_oid(d)}
                         for p, d in sorted(repo.tree(rev).items())])

    def _commits(self, repo, rev):
        oid, out = repo.resolve(rev), []
        while oid:
            parent, title = repo.log[oid]
            out.append({"id": oid, "title": title, "message": "", "authors": [{"user": "lab"}],
                        "date": "2025-01-01T00:00:00.000Z"})
            oid = parent
        self._send(200, out)

    def _revision(self, repo, rev):
        self._send(200, {"id": self.repo_id, "sha": repo.resolve(rev), "private": repo.private,
                         "siblings": [{"rfilename": p} for p in repo.tree(rev)]})

    def _branch(self, repo, name):
        if name in repo.branches:
            return self._send(409, {"error": "Reference already exists"})
        repo.branches[name] = repo.resolve(json.loads(self.body or b"{}").get("startingPoint", "main"))
        self._send(200, {})

    def _tag(self, repo, rev):
        tag = json.loads(self.body)["tag"]
        if tag in repo.tags:
            return self._send(409, {"error": "Reference already exists"})
        repo.tags[tag] = repo.resolve(rev)
        self._send(200, {})

    def _preupload(self, repo, rev):
        files = repo.tree(rev) if repo.resolve(rev) else {}
        asked = json.loads(self.body)["files"]
        self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                    "oid": _git_oid(files[f["path"]]) if f["path"] in files else None}
                                   for f in asked]})

    def _commit(self, repo, rev):
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if self.server.fail_commit is not None:
            self.server.fail_commit -= 1
            if self.server.fail_commit == 0:
                return self._send(400, {"error": "connection to storage lost"})
        files = dict(repo.tree(rev))
        added = []
        for line in lines:
            v = line["value"]
            if line["key"] == "file":
                files[v["path"]] = base64.b64decode(v["content"])
                added.append(v["path"])
            elif line["key"] == "deletedFile":
                files.pop(v["path"])
        title = lines[0]["value"]["summary"]
        repo.branches[rev] = repo.commit(repo.resolve(rev), files, title)
        self.server.commit_paths.append(added)
        self._send(200, {"commitUrl": f"{self.server.url}/datasets/{self.repo_id}/commit/{repo.branches[rev]}",
                         "commitOid": repo.branches[rev]})


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The stand-in, with the token in the environment as `HF_TOKEN` and the client pointed at it."""
    import huggingface_hub.constants

    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    for name in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))  # not this machine's login
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # What HF_ENDPOINT does when the client is imported: the API and file URLs point at the stand-in.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_URL_HOSTS", frozenset({"127.0.0.1"}))
    yield server
    server.shutdown()
    server.server_close()


def _publish(folder, *flags):
    return publish.main([str(folder), "--repo-id", REPO, *flags])


def _assert_no_token(capfd, caplog):
    out, err = capfd.readouterr()
    for text in (out, err, caplog.text):
        assert TOKEN not in text
    return out + err


def test_upload_creates_the_repo_and_tags_the_build(folder, hub, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    assert _publish(folder, "--private") == 0
    repo = hub.repos[REPO]
    build = card.front_matter((folder / "README.md").read_text())["simulforge"]["build"]
    assert repo.private
    assert repo.tree("main") == {".gitattributes": b"*.parquet filter=lfs\n", **_files(folder)}
    # The hub's card names the repo where the local one has the placeholder; the local card is untouched.
    uploaded, local = repo.tree("main")["README.md"].decode(), (folder / "README.md").read_text()
    assert f'REPO = "{REPO}"' in uploaded and "ORG/NAME" not in uploaded
    assert 'REPO = "ORG/NAME"' in local and uploaded.replace(REPO, "ORG/NAME") != local  # only that line differs
    assert [a for a, b in zip(uploaded.splitlines(), local.splitlines(), strict=True) if a != b] == \
        [f'REPO = "{REPO}"  # or the path of a local copy']
    assert repo.tags[f"build-{build}"] == repo.branches["main"]
    assert {a for _, a in hub.auth} == {f"Bearer {TOKEN}"}, hub.auth  # the token reached the hub, nothing else did
    out = _assert_no_token(capfd, caplog)
    assert f"build {build} uploaded to {REPO}@main" in out

    # The same build again: already published, nothing uploaded.
    commits = len(hub.commit_paths)
    assert _publish(folder) == 0
    assert len(hub.commit_paths) == commits
    assert "already published as tag" in _assert_no_token(capfd, caplog)


def test_interrupted_upload_resumes(folder, hub, capfd, caplog, monkeypatch):
    from huggingface_hub import _upload_pipeline

    # Four files per commit, and the hub drops the second commit: the first batch (the card
    # among it, files go in path order) is on main when the upload stops.
    monkeypatch.setattr(_upload_pipeline, "COMMIT_SIZE_SCALE", [4])
    monkeypatch.setattr(_upload_pipeline, "INITIAL_COMMIT_SIZE_INDEX", 0)
    hub.fail_commit = 2
    assert _publish(folder) == 1
    first = hub.commit_paths[0]
    assert "README.md" in first and len(hub.repos[REPO].tree("main")) == 1 + len(first)
    assert "upload to lab/simul-demo failed" in _assert_no_token(capfd, caplog)

    hub.fail_commit = None
    assert _publish(folder) == 0
    assert hub.repos[REPO].tree("main") == {".gitattributes": b"*.parquet filter=lfs\n", **_files(folder)}
    resumed = [p for paths in hub.commit_paths[1:] for p in paths]
    assert sorted(resumed) == sorted(set(_files(folder)) - set(first))  # nothing uploaded twice
    _assert_no_token(capfd, caplog)


def test_another_build_goes_to_its_own_branch(folder, hub, capfd, caplog):
    old_card = "---\n" + yaml.safe_dump({"simulforge": {"build": "0ld0ld0ld0ld0ld0"}}) + "---\n# old\n"
    old = {"README.md": old_card.encode(), "data/offline/train-00000-of-00001.parquet": b"old shard"}
    hub.seed(REPO, old)
    build = card.front_matter((folder / "README.md").read_text())["simulforge"]["build"]

    # Naming main explicitly would mix two builds: refused, nothing changes.
    assert _publish(folder, "--revision", "main") == 1
    err = _assert_no_token(capfd, caplog)
    assert "holds build 0ld0ld0ld0ld0ld0" in err and "would mix" in err
    assert hub.commit_paths == []

    assert _publish(folder) == 0
    repo = hub.repos[REPO]
    assert repo.tree("main") == {".gitattributes": b"*.parquet filter=lfs\n", **old}  # untouched
    assert repo.tree(f"build-{build}") == {".gitattributes": b"*.parquet filter=lfs\n", **_files(folder)}
    assert repo.tags == {}  # the branch is named after the build already
    assert f"went to branch build-{build}" in _assert_no_token(capfd, caplog)


def test_a_no_derivatives_source_stops_the_upload_unless_allowed(restricted, hub, capfd, caplog):
    head = card.front_matter((restricted / "README.md").read_text())
    assert head["license"] == "cc-by-nc-nd-4.0" and not head["simulforge"]["synthesized"]

    # A dry run names the problem and says the upload would stop.
    assert publish.main([str(restricted), "--repo-id", REPO, "--dry-run"]) == 0
    out = _assert_no_token(capfd, caplog)
    assert "warning: the sources' licenses forbid sharing this build without permission:" in out
    assert "mustc: its license cc-by-nc-nd-4.0 forbids sharing adapted material" in out
    assert "  - fleurs" not in out  # CC BY allows adaptations
    assert "an upload would stop at the license warning above unless given --allow-no-derivatives" in out

    # The upload stops before any request reaches the hub.
    assert publish.main([str(restricted), "--repo-id", REPO]) == 1
    err = _assert_no_token(capfd, caplog)
    assert "nothing uploaded: pass --allow-no-derivatives only if the rights holders allow you" in err
    assert hub.auth == [] and REPO not in hub.repos

    # With the publisher's word for it, it goes ahead.
    assert publish.main([str(restricted), "--repo-id", REPO, "--allow-no-derivatives"]) == 0
    assert hub.repos[REPO].tree("main") == {".gitattributes": b"*.parquet filter=lfs\n", **_files(restricted)}
    assert "mustc: its license cc-by-nc-nd-4.0" in _assert_no_token(capfd, caplog)  # still said


def test_token_is_masked_in_errors(folder, hub, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    hub.reject_create_with = f"token {TOKEN} may not create repos in lab"  # a server that echoes it
    assert _publish(folder) == 1
    err = _assert_no_token(capfd, caplog)
    assert "may not create repos" in err and "***" in err


def test_no_token_is_a_clear_error(folder, hub, capfd, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    assert _publish(folder) == 1
    assert "no Hugging Face token: set HF_TOKEN" in capfd.readouterr().err
    assert hub.auth == []


def test_saved_login_is_used(folder, hub, capfd, caplog, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    (tmp_path / "token").write_text(TOKEN)  # what `hf auth login` saves
    assert _publish(folder) == 0
    _assert_no_token(capfd, caplog)


def test_log_records_mask_the_token(caplog):
    from simulforge.pipeline import hub

    with hub._masked(TOKEN):
        logging.getLogger("huggingface_hub.test").warning("sending Authorization: Bearer %s", TOKEN)
    logging.getLogger("huggingface_hub.test").warning("after: %s", "plain")
    assert TOKEN not in caplog.text and "Bearer ***" in caplog.text and "after: plain" in caplog.text
