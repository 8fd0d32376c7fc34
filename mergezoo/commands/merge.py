"""`mergezoo merge`: run a recipe, or a merge given on the command line."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from mergezoo.errors import RecipeError
from mergezoo.merge import MergeRecipe, run_recipe
from mergezoo.merge.recipe import check_yaml_size

EPILOG = """examples:
  mergezoo merge recipe.yaml --out merged
  mergezoo merge --method ties --base org/base org/a org/b --out merged --set density=0.2 --set lambda=1.0
  mergezoo merge --method average ./expert-a ./expert-b --out soup --out-dtype bfloat16

`mergezoo methods` lists the methods and their hyperparameters.

environment:
  OMP_NUM_THREADS     compute threads (results are identical for any count)
  MERGEZOO_KERNELS    auto (default): fused CPU kernels (LLVM, via llvmlite) when the merge is
                      large enough to win back loading them (~0.1 s); fused: always; eager:
                      never. Outputs are byte-identical either way. --kernels sets it too.
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
    p.add_argument("--out", "-o", required=True, help="output folder (written atomically)")
    p.add_argument("--method", "-m", help="merge method, instead of a recipe")
    p.add_argument("--base", help="base model the experts were fine-tuned from")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyperparameter, e.g. density=0.2 (repeatable; overrides the recipe)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--kernels", choices=["auto", "fused", "eager"],
                   help="CPU merge kernels (default: $MERGEZOO_KERNELS or auto; see below)")
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
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept .bin/.pt checkpoints (loaded with torch.load(weights_only=True))")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _parse_sets(items: list[str]) -> dict:
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


def run(args: argparse.Namespace) -> int:
    if args.kernels:  # the engine reads it (mergezoo.merge.kernels.mode)
        os.environ["MERGEZOO_KERNELS"] = args.kernels
    recipe = build_recipe(args)
    result = run_recipe(recipe, out_dir=args.out, device=args.device, overwrite=args.overwrite,
                        progress=not args.quiet, allow_pickle=args.allow_pickle,
                        max_shard_size=args.shard_size)
    if result.lora_errors and not args.quiet:
        worst = max(result.lora_errors.items(), key=lambda kv: kv[1])
        mean = sum(result.lora_errors.values()) / len(result.lora_errors)
        print(f"LoRA rank {recipe.rank}: relative reconstruction error mean {mean:.4f}, worst "
              f"{worst[1]:.4f} ({worst[0]}); per layer in lora_errors.json", file=sys.stderr)
    if not args.quiet:
        print(f"merged {result.n_tensors} tensors ({result.n_parameters:,} parameters) with "
              f"{result.method} on {result.device} in {result.seconds:.1f} s -> {result.out_dir}",
              file=sys.stderr)
    return 0
