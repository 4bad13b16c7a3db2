"""`simulforge publish FOLDER --repo-id ORG/NAME`: check a curated folder, then upload it to the Hugging Face Hub.

The folder must be exactly one build (see pipeline/hub.py for the checks). `--dry-run` runs
the checks and lists what would be uploaded, without a token or a network. The upload
resumes where an interrupted one stopped; a build never lands on a branch that holds
another build. The token comes from HF_TOKEN or `hf auth login` and is never printed.

A source whose license forbids sharing adapted material (NoDerivatives, as MuST-C's CC
BY-NC-ND) is named before anything is uploaded, and the upload stops unless
`--allow-no-derivatives` says that the publisher holds the rights holders' permission.
"""

from __future__ import annotations

import argparse
import re
import sys

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulforge publish", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a folder written by `simulforge curate`")
    p.add_argument("--repo-id", required=True, help="the hub dataset repo, ORG/NAME")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                                                          "visibility)")
    p.add_argument("--revision", metavar="BRANCH",
                   help="branch to publish on (default: main, or branch build-<id> when main holds another build)")
    p.add_argument("--dry-run", action="store_true", help="check the folder and list what would be uploaded")
    p.add_argument("--allow-no-derivatives", action="store_true",
                   help="upload although a source's license forbids sharing adapted material (NoDerivatives, "
                        "e.g. MuST-C's CC BY-NC-ND): only with the rights holders' permission")
    return p


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def listing(manifest, repo_id: str, private: bool, revision: str | None) -> list[str]:
    """What a dry run prints: the build, its configs, every file, and where it would go."""
    run = manifest.card.get("simulforge", {})
    total = sum(size for _, size in manifest.files)
    lines = [f"{manifest.folder}: build {manifest.build} (simulforge {run.get('pipeline')}, "
             f"config {run.get('config_hash')}), every check passed",
             "checked: every config's shard sets are whole, every shard's schema is the card's features, "
             "rows agree with stats.json, the shards hash to the card's build id, no stray files", "configs:"]
    for config, splits in manifest.rows.items():
        parts = [f"{split} {n} rows in {manifest.shards[config][split]} shard(s)" for split, n in splits.items()]
        lines.append(f"  {config:<15}{', '.join(parts)}")
    lines.append(f"files: {len(manifest.files)}, {_size(total)}")
    lines += [f"  {_size(size):>10}  {path}" for path, size in manifest.files]
    where = (f"branch {revision} (refused if it holds another build)" if revision else
             f"branch main, or branch build-{manifest.build} if main holds another build")
    lines.append(f"would upload to dataset repo {repo_id}{' (private)' if private else ''} on {where}, "
                 f"then tag build-{manifest.build}")
    lines.append(f'the uploaded README.md names the repo in its loading examples: REPO = "{repo_id}"')
    return lines


def license_warning(restrictions: list[str]) -> str:
    return ("the sources' licenses forbid sharing this build without permission:\n"
            + "\n".join(f"  - {r}" for r in restrictions))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not REPO_ID.match(args.repo_id):
        return _fail(f"--repo-id {args.repo_id!r}: expected ORG/NAME")
    from .pipeline import hub, provenance

    try:
        manifest = hub.check(args.folder)
        restricted = provenance.restrictions(manifest.card)
        if restricted:
            print(f"simulforge publish: warning: {license_warning(restricted)}", file=sys.stderr)
        if args.dry_run:
            print("\n".join(listing(manifest, args.repo_id, args.private, args.revision)))
            if restricted and not args.allow_no_derivatives:
                print("an upload would stop at the license warning above unless given --allow-no-derivatives")
            print("dry run: nothing uploaded")
            return 0
        if restricted and not args.allow_no_derivatives:
            return _fail("nothing uploaded: pass --allow-no-derivatives only if the rights holders allow you to "
                         "share this adapted data")
        done = hub.upload(manifest, args.repo_id, private=args.private, revision=args.revision)
    except hub.PublishError as e:
        return _fail(str(e))
    print(done.note)
    print(f"{done.repo_id}@{done.revision} is at commit {done.commit}; load this build with "
          f"revision=\"build-{manifest.build}\"")
    return 0


def _fail(message: str) -> int:
    print(f"simulforge publish: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
