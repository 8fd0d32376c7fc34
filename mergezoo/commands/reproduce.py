"""`mergezoo reproduce`: re-run a published merge and check every output file against its card."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reproduce", help="re-run a merge from its card and compare the sha256 of every file",
        description="Reads the provenance of a merged model (a folder, or a Hub repo ID fetched "
        "at an optional @revision), pulls the same inputs at the pinned commits (local inputs "
        "are checked by hash), re-runs the merge and compares every output file with the card. "
        "Prints REPRODUCED, or names each file that differs and exits with status 1.",
        epilog="examples:\n  mergezoo reproduce org/merged\n  mergezoo reproduce ./merged "
        "--out rebuilt", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="REPO_OR_DIR")
    p.add_argument("--out", help="keep the re-run in this folder (default: a temporary one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept .bin/.pt inputs (loaded with torch.load(weights_only=True))")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergezoo.model_cards import reproduce

    report = reproduce(args.source, args.out, device=args.device, overwrite=args.overwrite,
                       progress=not args.quiet and not args.json, allow_pickle=args.allow_pickle)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif report.ok:
        print(f"REPRODUCED: {len(report.compared)} file(s) match the card of {args.source} "
              f"({', '.join(report.compared)})")
    else:
        print(f"NOT REPRODUCED: {len(report.differing)} of {len(report.compared)} file(s) differ "
              f"from the card of {args.source}:")
        for name, why in report.differing.items():
            print(f"  {name}: {why}")
    return 0 if report.ok else 1
