"""LoRA experts in: full per-layer deltas for the engine.

A LoRA adapter is merged through its full delta, dW = B @ A * scaling, never through A and B
separately (averaging factors adds cross terms). `LoraSource` wraps the base model's source and
an adapter and yields, for every base tensor, base + dW computed lazily in `get()`, so the engine
sees a full fine-tune; `delta()` gives dW itself in float32. Scaling follows PEFT: lora_alpha / r,
with `rank_pattern` / `alpha_pattern` per module and `use_rslora` (alpha / sqrt(r)). Embedding
(lora_embedding_A/B), Conv (kernel-shaped A) and `fan_in_fan_out` layers are handled;
`modules_to_save` tensors replace the base tensor. Adapters come as PEFT folders
(adapter_config.json + adapter_model.safetensors) or diffusers LoRA files
(pytorch_lora_weights.safetensors, in the PEFT, old diffusers `lora.down/up` or kohya
`lora_unet_..._lora_down/up` + `.alpha` naming).

The other direction (a merged delta re-factorised into an adapter) is
`mergezoo.merge.lora_extract`. This module imports no other source module: `open_source`
(mergezoo.merge.sources) opens an adapter folder through `open_lora_source`.

Example:
    >>> src = open_lora_source("adapters/math", "expert 'math'", open_source("base"))  # doctest: +SKIP
    >>> src.get("model.layers.0.self_attn.q_proj.weight")   # base + B @ A * alpha / r  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from mergezoo.errors import IncompatibleModelsError, ModelNotFoundError
from mergezoo.merge.tensor_source import TensorSource

PEFT_FILE = "adapter_model.safetensors"
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
COMPONENT_PREFIXES = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3",
                      "prior", "decoder")

_PEFT_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|"
                       r"lora_embedding_B|lora_magnitude_vector)(?:\.(?P<rest>.+))?$")
_OLD_DIFFUSERS_KEY = re.compile(r"^(?P<module>.+?)\.(?:lora\.)?(?P<part>down|up)\.weight$")
_KOHYA_KEY = re.compile(r"^(?P<module>lora_[a-z_0-9]+?)\.(?P<part>lora_down|lora_up|alpha)"
                        r"(?:\.weight)?$")


@dataclass
class LoraLayer:
    """One adapted layer: where its factors are, how to scale them, and its layout."""

    a_key: str
    b_key: str
    scaling: float
    layout: str = "linear"          # "linear" | "embedding"
    fan_in_fan_out: bool = False


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rank/alpha pattern lookup: the first key matching the end of `module`."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class LoraSource:
    """A base model plus a LoRA adapter, seen as a full model (a `TensorSource`)."""

    def __init__(self, base: TensorSource, adapter_file: Path, layers: dict[str, LoraLayer],
                 replacements: dict[str, str], label: str):
        self.base = base
        self.label = label
        self.weights_stem = getattr(base, "weights_stem", "model")
        self.adapter_file = adapter_file
        self.layers = layers                  # base tensor name -> LoraLayer
        self.replacements = replacements      # base tensor name -> adapter tensor name
        self._handle = safe_open(str(adapter_file), framework="pt", device="cpu")
        for key, layer in layers.items():
            self._check_shape(key, layer)
        for key, source_key in replacements.items():
            shape = tuple(self._handle.get_slice(source_key).get_shape())
            if shape != tuple(base.shape(key)):
                raise IncompatibleModelsError(
                    f"{label}: {source_key} has shape {list(shape)}, but the base tensor {key} "
                    f"has {list(base.shape(key))}")

    def keys(self) -> list[str]:
        return self.base.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self.base.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self.base.dtype(key)

    def delta(self, key: str) -> torch.Tensor | None:
        """dW of `key` in float32 (B @ A * scaling, in the base tensor's layout), or None."""
        layer = self.layers.get(key)
        if layer is None:
            return None
        a = self._handle.get_tensor(layer.a_key).to(torch.float32)
        b = self._handle.get_tensor(layer.b_key).to(torch.float32)
        if layer.layout == "embedding":
            return (b @ a).T * layer.scaling
        out_shape = self.base.shape(key)
        delta = (b.flatten(1) @ a.flatten(1)) * layer.scaling
        if layer.fan_in_fan_out:
            delta = delta.T
        return delta.reshape(out_shape)

    def get(self, key: str) -> torch.Tensor:
        source_key = self.replacements.get(key)
        tensor = self._handle.get_tensor(source_key) if source_key else self.base.get(key)
        delta = self.delta(key)
        if delta is None:
            # A copy: the engine reads the base too, and the same safetensors handle may hand
            # out tensors sharing memory, which in-place arithmetic would corrupt.
            return tensor.clone() if source_key is None else tensor
        # In float32: rounding W + dW to a bf16 base's dtype would lose most of dW.
        return tensor.to(torch.float32) + delta

    def _check_shape(self, key: str, layer: LoraLayer) -> None:
        a = tuple(self._handle.get_slice(layer.a_key).get_shape())
        b = tuple(self._handle.get_slice(layer.b_key).get_shape())
        base_shape = tuple(self.base.shape(key))
        if layer.layout == "embedding":
            expected = (a[1], b[0])
        else:
            expected = (a[1], b[0]) if layer.fan_in_fan_out else (b[0], a[1])
        if a[0] != b[1] or tuple(base_shape[:2]) != expected:
            raise IncompatibleModelsError(
                f"{self.label}: LoRA factors {layer.a_key} {list(a)} and {layer.b_key} {list(b)} "
                f"do not fit the base tensor {key} {list(base_shape)}")


def open_lora_source(folder: str | Path, label: str, base_source: TensorSource, *,
                     component: str | None = None) -> LoraSource:
    """Open a PEFT adapter folder, or a diffusers LoRA file, over `base_source`.

    For diffusers LoRA files holding several components (unet., text_encoder., ...), the
    component whose tensor names fit the base is used, or `component` when given.
    """
    folder = Path(folder).expanduser()
    if folder.is_file():
        folder, names = folder.parent, [folder.name]
    else:
        names = [PEFT_FILE, DIFFUSERS_LORA_FILE]
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    adapter_file = next((folder / n for n in names if (folder / n).is_file()), None)
    if adapter_file is None:
        loose = sorted(folder.glob("*.safetensors"))
        if len(loose) != 1:
            raise ModelNotFoundError(f"{label}: no adapter weights ({PEFT_FILE} or "
                                     f"{DIFFUSERS_LORA_FILE}) in {folder}")
        adapter_file = loose[0]
    _check_config(config, label)
    with safe_open(str(adapter_file), framework="pt", device="cpu") as handle:
        keys = list(handle.keys())
        alphas = {k: float(handle.get_tensor(k).item()) for k in keys if k.endswith(".alpha")}
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in keys}
        metadata = handle.metadata() or {}
    if not config and "lora_adapter_metadata" in metadata:  # diffusers >= 0.33 stores the config
        try:
            config = json.loads(metadata["lora_adapter_metadata"])
        except json.JSONDecodeError:  # unreadable metadata: as if the file had none
            config = {}
    base_keys = set(base_source.keys())
    layers, replacements, unknown = _map_keys(keys, shapes, alphas, config, base_keys, component)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise IncompatibleModelsError(f"{label}: {len(unknown)} adapter tensor(s) match no tensor "
                                      f"of the base model: {shown}")
    if not layers and not replacements:
        raise IncompatibleModelsError(f"{label}: the adapter in {adapter_file.name} changes no "
                                      "tensor of the base model")
    return LoraSource(base_source, adapter_file, layers, replacements, label)


def _check_config(config: dict, label: str) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise IncompatibleModelsError(f"{label}: a {peft_type} adapter; only LoRA can be merged")
    if config.get("use_dora"):
        raise IncompatibleModelsError(f"{label}: a DoRA adapter (use_dora); its magnitude "
                                      "vectors cannot be merged as a delta")
    for unsupported in ("layer_replication", "target_parameters"):
        if config.get(unsupported):
            raise IncompatibleModelsError(f"{label}: adapters with {unsupported} are not supported")


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if prefix and key.startswith(prefix) else key


def _map_keys(keys: list[str], shapes: dict[str, tuple], alphas: dict[str, float], config: dict,
              base_keys: set[str], component: str | None):
    """Pair adapter tensors into layers keyed by base tensor name, whatever the naming scheme."""
    best = None
    for prefix in _candidate_prefixes(keys, component):
        result = _map_with_prefix(keys, shapes, alphas, config, base_keys, prefix)
        hits = len(result[0]) + len(result[1])
        if best is None or (hits, -len(result[2])) > (best[0], -len(best[1][2])):
            best = (hits, result)
    return best[1]


def _candidate_prefixes(keys: list[str], component: str | None) -> list[str]:
    if component:
        kohya = {"unet": "lora_unet_", "text_encoder": "lora_te_", "transformer": "lora_transformer_"}
        return [f"base_model.model.{component}.", f"{component}.", kohya.get(component, "")]
    prefixes = ["base_model.model.", ""]
    prefixes += [f"{name}." for name in COMPONENT_PREFIXES if any(k.startswith(f"{name}.") for k in keys)]
    prefixes += sorted({m.group(1) for k in keys
                        if (m := re.match(r"^(lora_(?:unet|te\d?|transformer)_)", k))})
    return prefixes


def _map_with_prefix(keys, shapes, alphas, config, base_keys, prefix):
    if prefix and any(str(k).startswith(prefix) for k in config):  # diffusers packs per component
        config = {k[len(prefix):]: v for k, v in config.items() if str(k).startswith(prefix)}
    layers: dict[str, LoraLayer] = {}
    replacements: dict[str, str] = {}
    unknown: list[str] = []
    pairs: dict[str, dict[str, str]] = {}
    kohya_index = None
    default_r = config.get("r")
    default_alpha = config.get("lora_alpha")
    for key in keys:
        if prefix and not key.startswith(prefix):
            continue  # e.g. another component of a multi-component diffusers LoRA file
        rest = _strip(key, prefix)
        if key.endswith(".alpha"):
            continue
        if prefix.startswith("lora_"):
            match = _KOHYA_KEY.match(key)
            if not match:
                unknown.append(key)
                continue
            if kohya_index is None:
                kohya_index = {k.removesuffix(".weight").replace(".", "_"): k.removesuffix(".weight")
                               for k in base_keys if k.endswith(".weight")}
            module = kohya_index.get(match.group("module")[len(prefix):])
            if module is None:
                unknown.append(key)
                continue
            part = "A" if match.group("part") == "lora_down" else "B"
            pairs.setdefault(module, {})[part] = key
            alpha_key = f"{match.group('module')}.alpha"
            if alpha_key in alphas:
                pairs[module]["alpha"] = alpha_key
            continue
        match = _PEFT_KEY.match(rest)
        if match and match.group("part") != "lora_magnitude_vector":
            part = match.group("part")
            kind = "embedding" if "embedding" in part else "linear"
            slot = "A" if part.endswith("A") else "B"
            pairs.setdefault(match.group("module"), {"layout": kind})[slot] = key
            continue
        match = _OLD_DIFFUSERS_KEY.match(rest)
        if match:
            module = match.group("module").removesuffix(".lora")
            module = re.sub(r"\.processor\.(to_[qkv]|to_out)_lora$", r".\1", module)
            module = module.replace(".to_out.", ".to_out.0.") if module.endswith(".to_out") else module
            pairs.setdefault(module, {})["A" if match.group("part") == "down" else "B"] = key
            continue
        target = rest.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
        if target in base_keys:
            replacements[target] = key
        else:
            unknown.append(key)
    for module, found in pairs.items():
        weight = f"{module}.weight"
        if weight not in base_keys or "A" not in found or "B" not in found:
            unknown += [found[s] for s in ("A", "B") if s in found]
            continue
        layers[weight] = LoraLayer(found["A"], found["B"], 0.0, found.get("layout", "linear"),
                                   bool(config.get("fan_in_fan_out")))
        layers[weight].scaling = _scaling(module, found, shapes[found["A"]][0], alphas, config,
                                          default_r, default_alpha)
    return layers, replacements, unknown


def _scaling(module: str, found: dict, rank: int, alphas: dict, config: dict, default_r,
             default_alpha) -> float:
    """PEFT's scaling of one layer: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    if "alpha" in found:  # kohya: an explicit alpha per module
        alpha = alphas[found["alpha"]]
    elif default_alpha is not None:
        alpha = pattern_value(config.get("alpha_pattern"), module, default_alpha)
    else:
        alpha = rank  # diffusers without alphas: scaling 1
    r = pattern_value(config.get("rank_pattern"), module, default_r) if default_r else rank
    if int(r) != int(rank):
        raise IncompatibleModelsError(f"{module}: adapter_config.json gives rank {r}, but the "
                                      f"saved factors have rank {rank}")
    if config.get("use_rslora"):
        return float(alpha) / math.sqrt(r)
    return float(alpha) / float(r)
