"""`mergezoo card`: (re)write the model card of a merged folder, e.g. after an evaluation."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "card", help="(re)write the model card (README.md) of a merged folder",
        description="Renders README.md from the folder's mergezoo_merge.json and "
        "mergezoo_recipe.yaml (and a benchmark's results.json: results table, model-index per "
        "cell, plots; results.json and the plots are copied into the folder). The old card is "
        "replaced atomically.",
        epilog="example:\n  mergezoo card merged --results bench/results.json --repo-id org/merged",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR", help="a folder written by `mergezoo merge`")
    p.add_argument("--results", metavar="RESULTS_JSON", help="results.json of `mergezoo bench`")
    p.add_argument("--repo-id", help="the Hub repo it will be pushed to (used in the snippets)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergezoo.model_cards import write_card

    path = write_card(args.folder, args.results, repo_id=args.repo_id)
    print(f"wrote {path}")
    return 0
