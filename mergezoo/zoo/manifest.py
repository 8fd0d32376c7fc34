"""What a model is, read from its configs and safetensors headers only (no weights).

A `ModelManifest` records a model's kind (full fine-tune, PEFT LoRA adapter, diffusers pipeline or
model, diffusers LoRA file), its configs, card metadata, and for every weight-bearing component
the name, shape and dtype of each tensor. `inspect_hub` builds one from the Hub with
`HfApi.model_info`, small JSON downloads and `HfApi.get_safetensors_metadata` /
`parse_safetensors_file_metadata` (HTTP range requests on the headers), so a merge can be checked
before any weight is downloaded. `inspect_local` builds the same from a folder.

Example:
    >>> m = inspect_hub(ModelRef.parse("org/expert@main"))        # doctest: +SKIP
    >>> m.kind, m.architecture, len(m.components[""].tensors)      # doctest: +SKIP
    ('full', 'LlamaForCausalLM', 39)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from huggingface_hub import ModelCard, hf_hub_download

from mergezoo.errors import IncompatibleModelsError, ModelNotFoundError, UnsafePathError
from mergezoo.zoo.hub import hub_api, hub_errors
from mergezoo.zoo.paths import member
from mergezoo.zoo.safetensors_header import read_header
from mergezoo.zoo.refs import ModelRef

# File stems that transformers, diffusers and peft save weights under, in order of preference.
WEIGHT_STEMS = ("model", "diffusion_pytorch_model", "adapter_model", "pytorch_lora_weights")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Subfolders of a diffusers pipeline whose weights can be merged.
DIFFUSERS_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3",
                        "vae", "prior", "decoder")
LORA_FILES = ("pytorch_lora_weights.safetensors",)

TensorMeta = tuple[tuple[int, ...], str]  # (shape, safetensors dtype such as "F32")


@dataclass
class Component:
    """One weight-bearing part of a model: the root of a transformers model, or `unet/`."""

    name: str
    config: dict | None = None
    tensors: dict[str, TensorMeta] = field(default_factory=dict)
    weight_files: list[str] = field(default_factory=list)
    pickle_files: list[str] = field(default_factory=list)

    @property
    def pickle_only(self) -> bool:
        return not self.weight_files and bool(self.pickle_files)


@dataclass
class ModelManifest:
    """A model described from its metadata: kind, configs, card and tensor headers."""

    label: str                      # how messages name it: "org/a@rev" or a path
    kind: str                       # "full" | "lora" | "diffusers" | "diffusers-lora"
    files: list[str]
    repo_id: str | None = None
    revision: str | None = None     # commit SHA (Hub models)
    config: dict | None = None
    adapter_config: dict | None = None
    model_index: dict | None = None
    card: dict = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)

    @property
    def architecture(self) -> str | None:
        if self.model_index:
            return self.model_index.get("_class_name")
        if self.config:
            archs = self.config.get("architectures") or []
            return archs[0] if archs else self.config.get("_class_name") or self.config.get("model_type")
        return None

    @property
    def model_type(self) -> str | None:
        return (self.config or {}).get("model_type")

    @property
    def vocab_size(self) -> int | None:
        config = self.config or {}
        if "vocab_size" in config:
            return config["vocab_size"]
        return (config.get("text_config") or {}).get("vocab_size")

    @property
    def base_models(self) -> list[str]:
        """Base models this one declares: adapter_config.json, else the card's `base_model`."""
        if self.adapter_config and self.adapter_config.get("base_model_name_or_path"):
            return [str(self.adapter_config["base_model_name_or_path"])]
        declared = self.card.get("base_model") or []
        return [declared] if isinstance(declared, str) else [str(b) for b in declared]

    @property
    def pickle_only(self) -> bool:
        return bool(self.components) and all(c.pickle_only for c in self.components.values())


# ---------------------------------------------------------------------------------------------
def detect_kind(files: list[str]) -> str:
    """full / lora / diffusers / diffusers-lora, from a repo's file names."""
    names = set(files)
    if "adapter_config.json" in names:
        return "lora"
    if "model_index.json" in names:
        return "diffusers"
    if any(n in names for n in LORA_FILES) and "config.json" not in names:
        return "diffusers-lora"
    if any(PurePosixPath(n).name.startswith("diffusion_pytorch_model") and "/" not in n
           for n in names):
        return "diffusers"
    return "full"


def component_names(kind: str, files: list[str]) -> list[str]:
    if kind != "diffusers" or "model_index.json" not in files:
        return [""]
    folders = {n.split("/")[0] for n in files if "/" in n}
    return [c for c in sorted(folders) if any(_is_weight(n) for n in files
                                               if n.startswith(c + "/") and n.count("/") == 1)]


def _is_weight(name: str) -> bool:
    return name.endswith(".safetensors") or name.endswith(PICKLE_SUFFIXES)


def weight_files_of(files: list[str], component: str = "") -> tuple[list[str], list[str], str | None]:
    """(safetensors files, pickle files, index file) of one component, preferring the index."""
    prefix = f"{component}/" if component else ""
    here = [n for n in files if n.startswith(prefix) and "/" not in n[len(prefix):]]
    for stem in WEIGHT_STEMS:
        index = f"{prefix}{stem}.safetensors.index.json"
        if index in here:
            return [], [], index
        if f"{prefix}{stem}.safetensors" in here:
            return [f"{prefix}{stem}.safetensors"], [], None
    safetensors = sorted(n for n in here if n.endswith(".safetensors"))
    pickles = sorted(n for n in here if n.endswith(PICKLE_SUFFIXES))
    return safetensors, pickles, None


def parse_safetensors_header(raw: bytes) -> dict[str, TensorMeta]:
    header = json.loads(raw)
    return {name: (tuple(meta["shape"]), meta["dtype"]) for name, meta in header.items()
            if name != "__metadata__"}


# ----- from the Hub --------------------------------------------------------------------------
def inspect_hub(ref: ModelRef | str, *, token: str | None = None,
                components: list[str] | None = None, read_headers: bool = True,
                label: str | None = None) -> ModelManifest:
    """Describe a Hub model from its metadata and safetensors headers (no weight download).

    `components` restricts which diffusers subfolders have their headers read (default: all);
    `read_headers=False` skips the headers (file lists and configs only). `label` names the
    model in messages (default: the reference as given).
    """
    ref = ref if isinstance(ref, ModelRef) else ModelRef.parse(str(ref))
    repo_id = ref.spec
    label = label or str(ref)
    api = hub_api(token)
    with hub_errors(repo_id, revision=ref.revision, token=token, what="reading its metadata",
                    label=label):
        info = api.model_info(repo_id, revision=ref.revision)
        sha = info.sha
        files = [member(s.rfilename, f"{label}: a file name in the repo")
                 for s in info.siblings or []]
        kind = detect_kind(files)
        card = info.card_data.to_dict() if info.card_data is not None else {}

        def load_json(name: str) -> dict | None:
            if name not in files:
                return None
            path = hf_hub_download(repo_id, name, revision=sha, token=token)
            return _read_json(Path(path), f"{repo_id}: {name}")

        manifest = ModelManifest(label=label, kind=kind, files=files, repo_id=repo_id,
                                 revision=sha, config=load_json("config.json"),
                                 adapter_config=load_json("adapter_config.json"),
                                 model_index=load_json("model_index.json"), card=card)
        _check_model_index(manifest)
        for name in component_names(kind, files):
            if components is not None and name and name not in components:
                continue
            comp = _component(name, files, manifest, load_json)
            safetensors = comp.weight_files
            if not read_headers:
                pass
            elif name == "" and ("model.safetensors" in files or
                               "model.safetensors.index.json" in files):
                meta = api.get_safetensors_metadata(repo_id, revision=sha, token=token)
                for file_meta in meta.files_metadata.values():
                    comp.tensors.update({k: (tuple(t.shape), t.dtype)
                                         for k, t in file_meta.tensors.items()})
            else:
                for filename in safetensors:
                    file_meta = api.parse_safetensors_file_metadata(repo_id, filename,
                                                                    revision=sha, token=token)
                    comp.tensors.update({k: (tuple(t.shape), t.dtype)
                                         for k, t in file_meta.tensors.items()})
            manifest.components[name] = comp
    return manifest


# ----- from a folder -------------------------------------------------------------------------
def inspect_local(path: str | Path, label: str | None = None) -> ModelManifest:
    """Describe a local model folder the same way, from its configs and safetensors headers."""
    root = Path(path).expanduser()
    label = label or str(root)
    if not root.is_dir():
        raise ModelNotFoundError(f"{label}: no such folder: {root}")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and ".cache" not in p.relative_to(root).parts)
    kind = detect_kind(files)

    def load_json(name: str) -> dict | None:
        return _read_json(root / name, f"{label}: {name}") if name in files else None

    card: dict = {}
    if (root / "README.md").is_file():
        card = ModelCard.load(root / "README.md", ignore_metadata_errors=True).data.to_dict()
    manifest = ModelManifest(label=label, kind=kind, files=files, config=load_json("config.json"),
                             adapter_config=load_json("adapter_config.json"),
                             model_index=load_json("model_index.json"), card=card)
    _check_model_index(manifest)
    for name in component_names(kind, files):
        comp = _component(name, files, manifest, load_json)
        for filename in comp.weight_files:
            member(filename, f"{label}: weight file", root=root)
            comp.tensors.update(read_local_header(root / filename, f"{label}: {filename}"))
        manifest.components[name] = comp
    return manifest


def _check_model_index(manifest: ModelManifest) -> None:
    """model_index.json names its components by folder: each must be a plain name."""
    for key in manifest.model_index or {}:
        if not key.startswith("_"):
            member(key, f"{manifest.label}: model_index.json component")
            if "/" in key or "\\" in key:
                raise UnsafePathError(f"{manifest.label}: model_index.json component {key!r} is "
                                      "not a folder name")


def _component(name: str, files: list[str], manifest: ModelManifest,
               load_json: Callable[[str], dict | None]) -> Component:
    """A component (the model itself, or a diffusers sub-folder) with its config and weight
    files (the shards an index names, when there is one); tensors are filled in by the caller."""
    comp = Component(name=name, config=load_json(f"{name}/config.json") if name else
                     manifest.config)
    safetensors, comp.pickle_files, index = weight_files_of(files, name)
    if index is not None:
        index_data = load_json(index) or {}
        weight_map = index_data.get("weight_map") or {}
        if not isinstance(weight_map, dict):
            raise IncompatibleModelsError(f"{manifest.label}: {index}: 'weight_map' is not an object")
        named = {}
        for key, value in weight_map.items():
            named.setdefault(value if isinstance(value, str) else repr(value), (key, value))
        safetensors = sorted(member(value, f"{manifest.label}: {index}: weight_map[{key!r}]")
                             for key, value in named.values())
        safetensors = [f"{name}/{f}" if name else f for f in safetensors]
    comp.weight_files = safetensors
    return comp


def read_local_header(path: Path, label: str) -> dict[str, TensorMeta]:
    """Tensor names, shapes and dtypes of a safetensors file, from its header alone (checked:
    see `safetensors_header.read_header`)."""
    return read_header(path, label).tensors


def _read_json(path: Path, label: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise IncompatibleModelsError(f"{label}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise IncompatibleModelsError(f"{label}: expected a JSON object")
    return data


def inspect(ref: ModelRef | str, *, token: str | None = None) -> ModelManifest:
    """`inspect_local` for local references, `inspect_hub` for repo IDs."""
    ref = ref if isinstance(ref, ModelRef) else ModelRef.parse(str(ref))
    if ref.is_local:
        return inspect_local(ref.spec, label=str(ref))
    return inspect_hub(ref, token=token)
