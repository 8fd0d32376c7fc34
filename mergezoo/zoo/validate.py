"""Check that experts can be merged before any weight is downloaded.

`validate_experts` reads each model's configs (config.json, model_index.json,
adapter_config.json) and safetensors headers, compares every expert with the base model (or,
without one, with the first expert) and raises one `IncompatibleModelsError` listing every
problem found: different architectures, missing or extra tensors, shape mismatches, different
base models, vocabulary size differences, LoRA adapters targeting layers the base lacks.

Example:
    >>> validate_experts(["org/a", "org/b@v2", "./local-c"], base="org/base")   # doctest: +SKIP
    Traceback (most recent call last):
    IncompatibleModelsError: 2 problems stop this merge:
      - org/b@v2: architecture BertForMaskedLM, but org/base is LlamaForCausalLM
      - org/b@v2: vocabulary size 30522, but org/base has 32000
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mergezoo.errors import IncompatibleModelsError, UnsafeCheckpointError, UnsafePathError
from mergezoo.zoo.manifest import Component, ModelManifest, inspect_hub, inspect_local
from mergezoo.zoo.refs import ModelRef

MAX_NAMES = 5  # tensor names listed per problem before "and N more"


def validate_experts(refs: Sequence[str | ModelRef], base: str | ModelRef | None = None, *,
                     token: str | None = None, component: str | None = None,
                     allow_pickle: bool | None = None) -> dict[str, str]:
    """Raise `IncompatibleModelsError` listing every reason `refs` cannot be merged onto `base`.

    Returns the commit SHA each Hub model was validated at ({reference as given: SHA}), to pin
    the download to (`pull_model(..., pin=)`): a branch moved meanwhile must not bring weights
    that were never validated.

    Works on Hub repo IDs (metadata and headers only, no weights) and local folders alike.
    `component` picks one diffusers subfolder (e.g. "unet"); by default every weight-bearing one
    is compared. With `allow_pickle=False`, pickle-only models raise `UnsafeCheckpointError`
    (None, the default, leaves that to `resolve_model`); their tensors cannot be checked early.
    """
    manifests, base_manifest = validate_models(refs, base, token=token, component=component,
                                               allow_pickle=allow_pickle)
    given = [str(r) for r in refs] + ([str(base)] if base is not None else [])
    every = manifests + ([base_manifest] if base is not None and base_manifest else [])
    return {ref: m.revision for ref, m in zip(given, every) if m.repo_id and m.revision}


def validate_models(refs: Sequence[str | ModelRef], base: str | ModelRef | None = None, *,
                    token: str | None = None, component: str | None = None,
                    allow_pickle: bool | None = None
                    ) -> tuple[list[ModelManifest], ModelManifest | None]:
    """`validate_experts`, returning the manifests it checked: one per ref, and the base's
    (None without a base). A Hub manifest is pinned to the commit it was read at; passing it
    to `resolve_model(..., manifest=)` downloads exactly that commit without asking the Hub
    about the model again."""
    manifests = inspect_models(refs, base, token=token, component=component)
    base_manifest = manifests.pop() if base is not None else None
    _refuse_pickles(manifests + ([base_manifest] if base_manifest else []), allow_pickle)
    implied = base_manifest or _implied_lora_base(manifests, token=token, component=component)
    problems = check_compatibility(manifests, implied, component=component)
    if problems:
        raise IncompatibleModelsError(format_problems(problems))
    return manifests, base_manifest


def inspect_models(refs: Sequence[str | ModelRef], base: str | ModelRef | None = None, *,
                   token: str | None = None, component: str | None = None) -> list[ModelManifest]:
    """Manifests of `refs`, then of `base` last when given."""
    parsed = [r if isinstance(r, ModelRef) else ModelRef.parse(str(r)) for r in refs]
    if base is not None:
        parsed.append(base if isinstance(base, ModelRef) else ModelRef.parse(str(base)))
    return [_inspect(r, token=token, component=component) for r in parsed]


def _inspect(ref: ModelRef, *, token: str | None, component: str | None) -> ModelManifest:
    if ref.is_local:
        return inspect_local(ref.spec, label=str(ref))
    from mergezoo.zoo.hub import is_offline

    if is_offline():
        from mergezoo.zoo.pull import cached_snapshot

        path, sha = cached_snapshot(ref, token=token)
        manifest = inspect_local(path, label=str(ref))
        manifest.repo_id, manifest.revision = ref.spec, sha
        return manifest
    return inspect_hub(ref, token=token, components=[component] if component else None)


def format_problems(problems: list[str]) -> str:
    head = "1 problem stops this merge" if len(problems) == 1 else \
        f"{len(problems)} problems stop this merge"
    return head + ":\n" + "\n".join(f"  - {p}" for p in problems)


def _refuse_pickles(manifests: list[ModelManifest], allow_pickle: bool | None) -> None:
    if allow_pickle is None or allow_pickle:
        return
    unsafe = [m for m in manifests if m.pickle_only]
    if unsafe:
        details = "; ".join(f"{m.label} ({', '.join(f for c in m.components.values() for f in c.pickle_files)})"
                            for m in unsafe)
        raise UnsafeCheckpointError(
            f"only pickle checkpoints (.bin/.pt), which can run code when loaded: {details}. "
            "Use safetensors versions, or pass --allow-pickle to load them with "
            "torch.load(weights_only=True).")


def _implied_lora_base(manifests: list[ModelManifest], *, token: str | None,
                       component: str | None) -> ModelManifest | None:
    """Without an explicit base, LoRA experts that all name the same base imply it."""
    bases = {m.base_models[0] for m in manifests if m.kind == "lora" and m.base_models}
    if len(bases) != 1:
        return None
    (name,) = bases
    ref = ModelRef.parse(name)
    if ref.is_local and not _exists(ref.spec):
        return None  # a path on the machine the adapter was trained on
    hub_adapter = next((m for m in manifests if m.kind == "lora" and m.repo_id), None)
    if ref.is_local and hub_adapter is not None:
        # A Hub adapter naming a folder of this machine must not make mergezoo read it.
        raise UnsafePathError(f"{hub_adapter.label}: adapter_config.json base_model_name_or_path "
                              f"= {name!r} is a local path outside the model; give the base "
                              "model explicitly (--base)")
    return _inspect(ref, token=token, component=component)


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).expanduser().exists()


# ----- the comparison ------------------------------------------------------------------------
def check_compatibility(experts: list[ModelManifest], base: ModelManifest | None = None, *,
                        component: str | None = None) -> list[str]:
    """Every problem that stops merging `experts` (onto `base`), as human-readable lines."""
    problems: list[str] = []
    full = [m for m in experts if m.kind not in ("lora", "diffusers-lora")]
    reference = base if base is not None else (full[0] if full else None)
    if base is not None and base.kind == "lora":
        problems.append(f"{base.label}: is a LoRA adapter; the base must be a full model")
        return problems
    problems += _check_declared_bases(experts, base)
    for expert in experts:
        if expert is reference:
            continue
        if expert.kind == "lora":
            problems += _check_lora(expert, reference)
        elif expert.kind == "diffusers-lora":
            if reference is not None and reference.kind != "diffusers":
                problems.append(f"{expert.label}: a diffusers LoRA file, but {reference.label} is "
                                f"a {reference.kind} model, not a diffusers pipeline")
        elif reference is not None:
            problems += _check_full(expert, reference, component)
    return problems


def _same_model(a: str, b: str) -> bool:
    a, b = a.split("@")[0].rstrip("/"), b.split("@")[0].rstrip("/")
    return a == b


def _check_declared_bases(experts: list[ModelManifest], base: ModelManifest | None) -> list[str]:
    problems = []
    if base is not None and base.repo_id:
        for m in experts:
            if m.base_models and not any(_same_model(b, base.repo_id) for b in m.base_models):
                problems.append(f"{m.label}: different base model: it was trained from "
                                f"{', '.join(m.base_models)}, not {base.repo_id}")
    elif base is None:
        declared = {m.label: m.base_models[0] for m in experts if m.base_models}
        if len({v.split('@')[0] for v in declared.values()}) > 1:
            listing = ", ".join(f"{k} from {v}" for k, v in declared.items())
            problems.append(f"different base models: {listing}")
    return problems


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f" and {len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else "")


def _check_full(expert: ModelManifest, ref: ModelManifest, component: str | None) -> list[str]:
    problems = []
    if expert.kind != ref.kind:
        return [f"{expert.label}: is a {expert.kind} model, but {ref.label} is a {ref.kind} model"]
    if expert.architecture and ref.architecture and expert.architecture != ref.architecture:
        problems.append(f"{expert.label}: architecture {expert.architecture}, but {ref.label} is "
                        f"{ref.architecture}")
    elif expert.model_type and ref.model_type and expert.model_type != ref.model_type:
        problems.append(f"{expert.label}: model type {expert.model_type}, but {ref.label} is "
                        f"{ref.model_type}")
    if expert.vocab_size and ref.vocab_size and expert.vocab_size != ref.vocab_size:
        problems.append(f"{expert.label}: vocabulary size {expert.vocab_size}, but {ref.label} "
                        f"has {ref.vocab_size}")
    names = [component] if component else sorted(set(expert.components) | set(ref.components))
    for name in names:
        where = f" in {name}/" if name else ""
        mine, theirs = expert.components.get(name), ref.components.get(name)
        if theirs is None or mine is None:
            lacking = ref.label if theirs is None else expert.label
            problems.append(f"{lacking}: has no {name or 'weights'} component{where}")
            continue
        if name and mine.config and theirs.config:
            a, b = mine.config.get("_class_name"), theirs.config.get("_class_name")
            if a and b and a != b:
                problems.append(f"{expert.label}: {name} is a {a}, but {ref.label}'s is a {b}")
        problems += _compare_tensors(expert.label, mine, ref.label, theirs, where)
    return problems


def _compare_tensors(label: str, mine: Component, ref_label: str, theirs: Component,
                     where: str) -> list[str]:
    if mine.pickle_only or theirs.pickle_only:
        return []  # pickle headers cannot be read before download; the engine checks later
    problems = []
    missing = sorted(set(theirs.tensors) - set(mine.tensors))
    extra = sorted(set(mine.tensors) - set(theirs.tensors))
    if missing:
        problems.append(f"{label}: {len(missing)} tensor(s) of {ref_label} missing{where}: "
                        f"{_names(missing)}")
    if extra:
        problems.append(f"{label}: {len(extra)} extra tensor(s) not in {ref_label}{where}: "
                        f"{_names(extra)}")
    shapes = [f"{k} {list(mine.tensors[k][0])} vs {list(theirs.tensors[k][0])}"
              for k in sorted(set(mine.tensors) & set(theirs.tensors))
              if mine.tensors[k][0] != theirs.tensors[k][0]]
    if shapes:
        problems.append(f"{label}: {len(shapes)} shape mismatch(es) with {ref_label}{where}: "
                        f"{_names(shapes)}")
    return problems


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B|"
                       r"lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(?:\.[^.]+)?"
                       r"(?:\.weight)?$")


def lora_modules(tensors: dict) -> dict[str, dict[str, tuple]]:
    """{module name: {"lora_A": meta, "lora_B": meta, ...}} from PEFT adapter tensor names."""
    modules: dict[str, dict[str, tuple]] = {}
    for key, meta in tensors.items():
        match = _LORA_KEY.match(key)
        if match:
            modules.setdefault(match.group("module"), {})[match.group("part")] = meta
    return modules


def _check_lora(expert: ModelManifest, base: ModelManifest | None) -> list[str]:
    config = expert.adapter_config or {}
    problems = []
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        return [f"{expert.label}: a {peft_type} adapter; only LoRA adapters can be merged"]
    if config.get("use_dora"):
        problems.append(f"{expert.label}: a DoRA adapter; DoRA's magnitude vectors are not supported")
    if base is None:
        return problems
    root = base.components.get("") or next(iter(base.components.values()), None)
    if root is None or root.pickle_only:
        return problems
    tensors = expert.components[""].tensors if "" in expert.components else {}
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    absent, mismatched = [], []
    for module, parts in sorted(lora_modules(tensors).items()):
        weight = f"{module}.weight"
        if weight not in root.tensors:
            absent.append(weight)
            continue
        shape = root.tensors[weight][0]
        expected = _lora_shape(parts, fan_in_fan_out)
        if expected is not None and tuple(expected) != tuple(shape[:len(expected)]):
            mismatched.append(f"{weight} {list(shape)} vs adapter {list(expected)}")
    if absent:
        problems.append(f"{expert.label}: adapter targets {len(absent)} layer(s) that "
                        f"{base.label} lacks: {_names(absent)}")
    if mismatched:
        problems.append(f"{expert.label}: {len(mismatched)} adapter shape mismatch(es) with "
                        f"{base.label}: {_names(mismatched)}")
    return problems


def _lora_shape(parts: dict[str, tuple], fan_in_fan_out: bool) -> tuple[int, ...] | None:
    """Shape of the weight an adapter's A/B pair updates (its first two dimensions)."""
    if "lora_A" in parts and "lora_B" in parts:
        a, b = parts["lora_A"][0], parts["lora_B"][0]
        shape = (b[0], a[1])
        return shape[::-1] if fan_in_fan_out else shape
    if "lora_embedding_A" in parts and "lora_embedding_B" in parts:
        a, b = parts["lora_embedding_A"][0], parts["lora_embedding_B"][0]
        return (a[1], b[0])
    return None
