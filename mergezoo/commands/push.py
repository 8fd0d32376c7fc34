"""`mergezoo push`: publish an output folder to the Hub in one commit."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "push", help="upload a folder (weights, card, recipe, results) to the Hub in one commit",
        description="Creates the repo if needed and uploads every file of DIR in ONE commit, so "
        "the repo never lacks its card. Uses the token in HF_TOKEN or the one stored by "
        "`hf auth login`.")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("repo_id", metavar="REPO", help="namespace/name")
    add_repo_options(p)
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, and where")
    p.add_argument("--message", help="commit message")
    p.add_argument("--allow-missing-card", action="store_true", help="push a folder without "
                   "README.md")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def add_repo_options(p: argparse.ArgumentParser, *, overwrite_flag: str = "--overwrite",
                     when: str = "") -> None:
    """The options of a push's target repo, for `push` and for `merge --push` (whose own
    `--overwrite` is the output folder's, hence `overwrite_flag`); `when` prefixes the help
    ("with --push: ")."""
    p.add_argument("--private", action="store_true", help=f"{when}create the repo as private")
    group = p.add_mutually_exclusive_group()
    group.add_argument(overwrite_flag, action="store_true", help=f"{when}replace the content of "
                       "an existing repo (files not pushed are deleted in the same commit)")
    group.add_argument("--create-pr", action="store_true", help=f"{when}open a pull request "
                       "instead of committing to main")


def run(args: argparse.Namespace) -> int:
    from mergezoo.model_cards import refresh_card
    from mergezoo.zoo.push import PushPlan, check_repo_id, push_folder

    if not args.dry_run:
        check_repo_id(args.repo_id)
        # An untouched mergezoo card names the local folder in its snippets; name the repo.
        refresh_card(args.folder, args.repo_id)
    result = push_folder(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run,
                         overwrite=args.overwrite, create_pr=args.create_pr,
                         commit_message=args.message, require_card=not args.allow_missing_card)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    if isinstance(result, PushPlan):
        where = f"{result.endpoint}/{result.repo_id}"
        mode = " as a pull request" if result.create_pr else (" (overwrite)" if result.overwrite
                                                               else "")
        print(f"dry run: would upload {len(result.files)} file(s), {result.total_bytes} bytes, "
              f"to {where}{mode}{' (private)' if result.private else ''} in one commit:")
        for path, size in result.files:
            print(f"  {size:>12}  {path}")
        return 0
    print(f"pushed {len(result.files)} file(s) to {result.repo_id} in one commit: "
          f"{result.commit_url}")
    if result.pr_url:
        print(f"pull request: {result.pr_url}")
    if result.deleted:
        print(f"deleted {len(result.deleted)} file(s) not in {args.folder}: "
              f"{', '.join(result.deleted)}")
    return 0
