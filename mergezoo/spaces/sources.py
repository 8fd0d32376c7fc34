"""Where the Space's experts come from: built-in benchmark zoos, a zoo folder, a bench results
folder, or Hub repo IDs. Each function returns `Playground`s ready for `build_app`.

Example:
    >>> playgrounds = builtin_playgrounds(size="tiny")          # builds the zoos if needed  # doctest: +SKIP
    >>> playgrounds = results_playgrounds("bench-out")          # a `mergezoo bench` run     # doctest: +SKIP
    >>> playgrounds = hub_playgrounds(["org/expert-a", "org/expert-b"])                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mergezoo.errors import BenchmarkError, ModelNotFoundError, SpaceInputError
from mergezoo.spaces.playground import Expert, Playground

log = logging.getLogger(__name__)

#: what `mergezoo space` serves with no arguments: an image classifier and a generator
BUILTIN = ("digits-domains", "digits-diffusion")
BENCH_TAG = "mergezoo-bench:"
SIZE_TAG = "mergezoo-size:"


def builtin_playgrounds(size: str = "default", benchmarks: tuple[str, ...] | list[str] = BUILTIN,
                        progress: bool = False) -> list[Playground]:
    """The built-in benchmarks' zoos (built, deterministically and offline, if not cached)."""
    from mergezoo.eval import build_zoo, get_benchmark

    out = []
    for name in benchmarks:
        bench = get_benchmark(name, size=size)
        out.append(Playground.from_zoo(build_zoo(bench, progress=progress), bench))
    return out


def zoo_playgrounds(folders: list[str | Path]) -> list[Playground]:
    """Built benchmark zoo folders (holding zoo.json), e.g. `mergezoo build-zoo --out DIR`."""
    from mergezoo.eval import BenchmarkZoo

    return [Playground.from_zoo(BenchmarkZoo(Path(f).expanduser())) for f in folders]


def results_playgrounds(folder: str | Path) -> list[Playground]:
    """A `mergezoo bench` output folder: its benchmark's zoo (the one the run used, or the same
    definition rebuilt) with the run's results.json and plots for the Results tab."""
    from mergezoo.eval import BenchmarkZoo, build_zoo, get_benchmark

    root = Path(folder).expanduser()
    path = root / "results.json"
    if not path.is_file():
        raise ModelNotFoundError(f"{root}: no results.json (is it a `mergezoo bench` output?)")
    try:
        results = json.loads(path.read_text())
        name, size = results["benchmark"], results.get("size") or "default"
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise BenchmarkError(f"{path}: not a bench results file ({err})") from None
    bench = get_benchmark(name, size=size)
    zoo_path = Path((results.get("zoo") or {}).get("path") or "")
    if zoo_path.is_dir() and (zoo_path / "zoo.json").is_file():
        zoo = BenchmarkZoo(zoo_path)
    else:
        log.info("%s: the run's zoo %s is gone; building %s (%s)", root, zoo_path, name, size)
        zoo = build_zoo(bench)
    return [Playground.from_zoo(zoo, bench, results_dir=root)]


def hub_playgrounds(repo_ids: list[str], base: str | None = None,
                    token: str | None = None) -> list[Playground]:
    """Experts given by Hub repo ID (pulled with `mergezoo.zoo.pull`): models of a mergezoo
    benchmark (their cards carry `mergezoo-bench:<name>` and `mergezoo-size:<size>` tags, as a
    pushed zoo's do). The base is `base`, else the first expert's card `base_model` (a bare
    name is looked up in the expert's namespace)."""
    from mergezoo.eval import build_zoo, get_benchmark
    from mergezoo.zoo.pull import pull_model

    if not repo_ids:
        raise SpaceInputError("give at least one expert repo ID")
    pulled = [pull_model(r, token=token) for r in repo_ids]
    cards = [_card(p.path) for p in pulled]
    bench_names = {t[len(BENCH_TAG):] for c in cards for t in c.get("tags") or []
                   if t.startswith(BENCH_TAG)}
    sizes = {t[len(SIZE_TAG):] for c in cards for t in c.get("tags") or [] if t.startswith(SIZE_TAG)}
    if len(bench_names) != 1:
        raise SpaceInputError(
            f"the Space runs experts of one mergezoo benchmark (cards tagged "
            f"'{BENCH_TAG}<name>'); {', '.join(repo_ids)} carry "
            f"{sorted(bench_names) or 'no such tag'}")
    base_ref = base or _base_of(pulled[0].repo_id, cards[0])
    base_path = pull_model(base_ref, token=token).path
    bench = get_benchmark(bench_names.pop(), size=sizes.pop() if len(sizes) == 1 else "default")
    experts = [Expert(p.repo_id, p.path) for p in pulled]
    return [Playground(f"{bench.name} (Hub experts)", bench, base_path, experts)]


def _card(path: Path) -> dict[str, Any]:
    from huggingface_hub import ModelCard

    readme = path / "README.md"
    if not readme.is_file():
        return {}
    return ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict()


def _base_of(repo_id: str, card: dict[str, Any]) -> str:
    base = card.get("base_model")
    if isinstance(base, list):
        base = base[0] if base else None
    if not base:
        raise SpaceInputError(f"{repo_id}: its card names no base_model; pass --base")
    return base if "/" in base else f"{repo_id.split('/')[0]}/{base}"
