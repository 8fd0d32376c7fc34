"""`mergezoo search`: find experts by tag on the Hub or in a local zoo."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search", help="find experts by tag on the Hub (or in a local zoo)",
        description="Lists models carrying every --tag, with their kind (full / LoRA / "
        "diffusers), base model, tags, downloads and last modification.")
    p.add_argument("--tag", action="append", default=[], help="a tag the model must carry "
                   "(repeatable)")
    p.add_argument("--pipeline-tag", help="e.g. image-classification, text-generation")
    p.add_argument("--base", help="only experts of this base model (repo ID)")
    p.add_argument("--author", help="only models of this user or organisation")
    p.add_argument("--search", help="a substring of the repo ID")
    p.add_argument("--limit", type=int, default=50, help="at most this many results (default 50)")
    p.add_argument("--zoo", help="search this local zoo folder instead of the Hub")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergezoo.zoo.search import search_models, search_zoo

    if args.zoo:
        hits = search_zoo(args.zoo, args.tag, base=args.base, pipeline_tag=args.pipeline_tag,
                          author=args.author, search=args.search, limit=args.limit)
    else:
        hits = search_models(args.tag, base=args.base, pipeline_tag=args.pipeline_tag,
                             author=args.author, search=args.search, limit=args.limit)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
        return 0
    rows = [("REPO ID", "KIND", "BASE MODEL", "TAGS", "DOWNLOADS", "LAST MODIFIED")]
    for h in hits:
        rows.append((h.repo_id, h.kind, h.base_model or "-", ",".join(h.tags) or "-",
                     "-" if h.downloads is None else str(h.downloads),
                     (h.last_modified or "-")[:19]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if not hits:
        print("(no models match)")
    return 0
