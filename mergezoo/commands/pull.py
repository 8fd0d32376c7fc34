"""`mergezoo pull`: download Hub models into the Hub cache and print their commit SHAs."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pull", help="download Hub models (safetensors, configs, tokenizer, adapters) into the cache",
        description="Resolves each REPO[@REVISION] to a commit SHA and downloads what a merge "
        "needs into the normal Hub cache. Pickle-only repos are refused unless --allow-pickle. "
        "With HF_HUB_OFFLINE=1 it answers from the cache. Uses the token in HF_TOKEN or the one "
        "stored by `hf auth login`.")
    p.add_argument("repos", nargs="+", metavar="REPO", help="org/name or org/name@revision")
    p.add_argument("--base", help="validate the repos as experts of this base model before "
                   "downloading any weights")
    p.add_argument("--check", action="store_true", help="validate that the repos can be merged "
                   "together before downloading any weights")
    p.add_argument("--component", help="diffusers pipelines: fetch only this component's weights")
    p.add_argument("--allow-pickle", action="store_true", help="accept .bin/.pt checkpoints")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mergezoo.zoo.pull import pull_model
    from mergezoo.zoo.validate import validate_experts

    pins: dict[str, str] = {}
    if args.check or args.base:
        pins = validate_experts(args.repos, base=args.base, component=args.component,
                                allow_pickle=args.allow_pickle)
    refs = list(args.repos) + ([args.base] if args.base else [])
    pulled = []
    try:
        for ref in refs:
            pulled.append(pull_model(ref, allow_pickle=args.allow_pickle, pin=pins.get(ref),
                                     components=[args.component] if args.component else None))
    except KeyboardInterrupt as err:  # the CLI prints `left`: what the interrupted pull left
        done = [f"{p.repo_id}@{p.revision}" for p in pulled]
        if done:
            err.left = f"pulled before it: {', '.join(done)}; " + getattr(err, "left", "")
        raise
    if args.json:
        print(json.dumps([p.to_dict() for p in pulled], indent=2))
    else:
        for p in pulled:
            print(f"{p.repo_id}@{p.revision}  {p.kind:9}  {p.path}")
    return 0
