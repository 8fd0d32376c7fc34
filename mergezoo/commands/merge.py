"""`mergezoo merge`: run a recipe, or a merge given on the command line."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import yaml

from mergezoo.commands.push import add_repo_options
from mergezoo.errors import RecipeError

if TYPE_CHECKING:  # the merge package imports torch: not needed for `mergezoo --help`
    from mergezoo.merge import MergeRecipe
    from mergezoo.merge.options import MergeOptions

EPILOG = """examples:
  mergezoo merge recipe.yaml --out merged
  mergezoo merge --method ties --base org/base org/a org/b --out merged --set density=0.2 --set lambda=1.0
  mergezoo merge --method average ./expert-a ./expert-b --out soup --out-dtype bfloat16
  mergezoo merge recipe.yaml --out merged --push org/merged     # merge, card, push: one commit

The output folder gets a model card (README.md) written from the merge's provenance;
`mergezoo card DIR --results results.json` rewrites it after an evaluation.

`mergezoo methods` lists the methods and their hyperparameters.

--kernels: auto (default): fused CPU kernels (LLVM, via llvmlite) when the merge is large
  enough to win back loading them (~0.1 s); fused: always; eager: never. Outputs are
  byte-identical either way.

environment:
  OMP_NUM_THREADS     compute threads (results are identical for any count)
  MERGEZOO_KERNELS    the default of --kernels (auto, fused or eager)
  MERGEZOO_KERNEL_CACHE
                      where compiled kernels are kept (default ~/.cache/mergezoo/kernels); it must
                      be owned by you and writable by no one else (else an error)"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge", help="merge models from a recipe or from the command line",
        description="Merge models (local paths or Hub repo IDs, optionally @revision) tensor "
        "by tensor into a new model folder that from_pretrained loads.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="RECIPE_OR_MODEL",
                   help="a recipe .yaml file, or (with --method) the experts to merge")
    p.add_argument("--out", "-o", help="output folder (written atomically, with its model "
                   "card); optional with --push (then a temporary folder)")
    p.add_argument("--method", "-m", help="merge method, instead of a recipe")
    p.add_argument("--base", help="base model the experts were fine-tuned from")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyperparameter, e.g. density=0.2 (repeatable; overrides the recipe)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--kernels", choices=["auto", "fused", "eager"],
                   help="fused CPU merge kernels (default: $MERGEZOO_KERNELS or auto; see "
                   "below)")
    p.add_argument("--dtype", help="compute dtype (default float32)")
    p.add_argument("--out-dtype", help="output dtype (default: the inputs')")
    p.add_argument("--lines", metavar="ALPHA,BETA",
                   help="LiNeS: scale layer l's merged task vector by alpha + beta * l/(L-1)")
    p.add_argument("--component", help="diffusers pipelines: the sub-folder to merge (e.g. unet)")
    p.add_argument("--seed", type=int, help="seed of random methods (DARE)")
    p.add_argument("--output", choices=["full", "lora"],
                   help="write the merged full model (default), or a LoRA of the merged delta")
    p.add_argument("--rank", type=int, help="LoRA rank for --output lora (truncated SVD)")
    p.add_argument("--shard-size", default="2GB", help="largest output shard (default 2GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--push", metavar="ORG/NAME", help="then push the folder (weights, recipe, "
                   "provenance, card) to this Hub repo in one commit")
    add_repo_options(p, overwrite_flag="--push-overwrite", when="with --push: ")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept .bin/.pt checkpoints (loaded with torch.load(weights_only=True))")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run, usage_error=p.error)


def _parse_sets(items: list[str]) -> dict:
    from mergezoo.merge.recipe import check_yaml_size

    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise RecipeError(f"--set expects NAME=VALUE, got {item!r}")
        check_yaml_size(value, f"--set {name.strip()}")
        try:
            params[name.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise RecipeError(f"--set {name.strip()}: not a YAML value ({err})") from None
    return params


def build_recipe(args: argparse.Namespace) -> MergeRecipe:
    """The recipe the command line describes (a recipe file, flags, or both)."""
    from mergezoo.merge import MergeRecipe

    if args.method:
        data = {"merge_method": args.method, "models": list(args.inputs)}
        if args.base:
            data["base_model"] = args.base
    else:
        if len(args.inputs) != 1 or not args.inputs[0].endswith((".yaml", ".yml")):
            raise RecipeError("give one recipe file (.yaml), or --method with the models to merge")
        recipe = MergeRecipe.from_file(args.inputs[0])
        data = recipe.model_dump(exclude_none=True)
        if args.base:
            data["base_model"] = args.base
    params = _parse_sets(args.set)
    data["parameters"] = {**data.get("parameters", {}), **params}
    for flag, field in (("dtype", "dtype"), ("out_dtype", "out_dtype"), ("component", "component"),
                        ("seed", "seed"), ("output", "output"), ("rank", "rank")):
        if getattr(args, flag) is not None:
            data[field] = getattr(args, flag)
    if args.lines:
        try:
            alpha, beta = (float(v) for v in args.lines.split(","))
        except ValueError:
            raise RecipeError(f"--lines expects ALPHA,BETA, got {args.lines!r}") from None
        data["lines"] = {"alpha": alpha, "beta": beta}
    return MergeRecipe.from_dict(data, "command line" if args.method else args.inputs[0])


def build_options(args: argparse.Namespace) -> MergeOptions:
    """How the command line asks the merge to run (`--kernels` unset: $MERGEZOO_KERNELS)."""
    from mergezoo.merge.options import MergeOptions

    chosen = {"kernels": args.kernels} if args.kernels else {}
    return MergeOptions(device=args.device, max_shard_size=args.shard_size,
                        overwrite=args.overwrite, progress=not args.quiet,
                        allow_pickle=args.allow_pickle, **chosen)


def run(args: argparse.Namespace) -> int:
    from mergezoo.merge import run_recipe

    import shutil
    import tempfile
    from pathlib import Path

    from mergezoo.model_cards import write_card

    if not args.out and not args.push:
        args.usage_error("the following arguments are required: --out (or --push ORG/NAME)")
    recipe = build_recipe(args)
    options = build_options(args)
    if args.push:  # refuse a bad repo ID or a missing token before the merge, not after it
        from mergezoo.errors import HubAccessError
        from mergezoo.zoo.hub import token_source
        from mergezoo.zoo.push import check_repo_id

        check_repo_id(args.push)
        if token_source(None) is None:
            raise HubAccessError(f"{args.push}: pushing needs a Hub token with write access; "
                                 "none was found: set the HF_TOKEN environment variable (or run "
                                 "`hf auth login`)")
    scratch = Path(tempfile.mkdtemp(prefix="mergezoo-push-")) if not args.out else None
    out = Path(args.out) if args.out else scratch / args.push.split("/")[-1]
    try:
        # The card is written inside the atomic output, so the folder never exists without it.
        result = run_recipe(recipe, out_dir=out, options=options,
                            finalize=lambda folder: write_card(folder, repo_id=args.push))
        if result.lora_errors and not args.quiet:
            worst = max(result.lora_errors.items(), key=lambda kv: kv[1])
            mean = sum(result.lora_errors.values()) / len(result.lora_errors)
            print(f"LoRA rank {recipe.rank}: relative reconstruction error mean {mean:.4f}, "
                  f"worst {worst[1]:.4f} ({worst[0]}); per layer in lora_errors.json",
                  file=sys.stderr)
        if not args.quiet:
            print(f"merged {result.n_tensors} tensors ({result.n_parameters:,} parameters) with "
                  f"{result.method} on {result.device} in {result.seconds:.1f} s -> "
                  f"{args.out or 'a temporary folder'}", file=sys.stderr)
        if args.push:
            from mergezoo.zoo.push import push_folder

            pushed = push_folder(out, args.push, private=args.private,
                                 overwrite=args.push_overwrite, create_pr=args.create_pr)
            print(f"pushed {len(pushed.files)} file(s) to {pushed.repo_id} in one commit: "
                  f"{pushed.commit_url}")
            if pushed.pr_url:
                print(f"pull request: {pushed.pr_url}")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0
