"""`mergezoo space`: run the Gradio Space locally, or deploy it as a Hugging Face Space."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "space", help="try merges in a Gradio app (locally, or deployed as a Space)",
        description="Runs the Gradio app: pick experts and a method, move the hyperparameter "
        "sliders, merge in memory, and try the merge beside its experts. With no source it "
        "serves the built-in digits-domains (classifier) and digits-diffusion (generator) "
        "zoos, building them if needed (offline). --deploy creates a Gradio Space repo with "
        "app.py, requirements.txt and README.md in one commit (token: HF_TOKEN or `hf auth "
        "login`).")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--zoo", nargs="+", metavar="DIR", help="built benchmark zoo folder(s)")
    source.add_argument("--results", metavar="DIR", help="a `mergezoo bench` output folder: its "
                        "zoo, plus its results table and plots")
    source.add_argument("--experts", nargs="+", metavar="ID", help="expert repo IDs on the Hub "
                        "(models of a mergezoo benchmark)")
    p.add_argument("--base", metavar="ID", help="with --experts: the base model (default: the "
                   "first expert's card base_model)")
    p.add_argument("--size", default="default", help="size of the built-in zoos (default, tiny)")
    p.add_argument("--port", type=int, default=7860, help="local port (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default "
                   "127.0.0.1; 0.0.0.0 to share on your network)")
    p.add_argument("--deploy", metavar="ORG/NAME", help="create or update this Space repo instead "
                   "of running locally")
    p.add_argument("--private", action="store_true", help="with --deploy: a private Space")
    p.add_argument("--overwrite", action="store_true", help="with --deploy: replace the files of "
                   "an existing Space")
    p.add_argument("--requirement", metavar="SPEC", help="with --deploy: how the Space installs "
                   "mergezoo (a pip requirement line; default mergezoo==<this version>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.deploy:
        return _deploy(args)
    from mergezoo.errors import SpaceInputError
    from mergezoo.spaces import sources
    from mergezoo.spaces.launch import make_demo, serve

    if args.port is not None and not 0 < args.port < 65536:
        raise SpaceInputError(f"--port {args.port} is not a TCP port")
    if args.zoo:
        playgrounds = sources.zoo_playgrounds(args.zoo)
    elif args.results:
        playgrounds = sources.results_playgrounds(args.results)
    elif args.experts:
        playgrounds = sources.hub_playgrounds(args.experts, base=args.base)
    else:
        print(f"building (or reusing) the built-in zoos, size {args.size} ...", file=sys.stderr)
        playgrounds = sources.builtin_playgrounds(size=args.size, progress=True)
    print(f"loading {len(playgrounds)} zoo(s) and their task vectors ...", file=sys.stderr)
    demo = make_demo(playgrounds)
    print(f"serving on http://{args.host}:{args.port} (Ctrl+C stops)", file=sys.stderr)
    serve(demo, port=args.port, host=args.host)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from mergezoo.errors import SpaceInputError
    from mergezoo.spaces.deploy import SpaceConfig, deploy_space

    if args.zoo or args.results:
        raise SpaceInputError("--deploy serves built-in zoos (--size) or Hub experts "
                              "(--experts); a local --zoo or --results folder is not on the Hub")
    config = SpaceConfig(size=args.size, experts=list(args.experts or []), base=args.base)
    result = deploy_space(args.deploy, config, private=args.private, overwrite=args.overwrite,
                          package=args.requirement)
    print(f"deployed the Space {result.repo_id} ({', '.join(result.files)}) in one commit: "
          f"{result.commit_url}")
    return 0
