"""End to end through the real clients: merge by repo ID, LoRA experts, a diffusers UNet."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mergezoo.cli import main
from mergezoo.errors import IncompatibleModelsError
from mergezoo.merge import merge_models

from .helpers import seed_llama_zoo


def _tensors(folder, name="model.safetensors"):
    return load_file(str(folder / name))


def test_merge_by_repo_ids_equals_merging_local_copies(hub, tiny, tmp_path):
    ids = seed_llama_zoo(hub.state, tiny)
    params = {"density": 0.5, "lambda": 1.0}
    by_id = merge_models("ties", [ids["expert0"], ids["expert1"]], base=ids["base"],
                         out_dir=tmp_path / "by-id", params=params, progress=False)
    local = merge_models("ties", [tiny.llama_experts[0], tiny.llama_experts[1]],
                         base=tiny.llama_base, out_dir=tmp_path / "local", params=params,
                         progress=False)
    assert by_id.sha256 == local.sha256
    provenance = json.loads((tmp_path / "by-id" / "mergezoo_merge.json").read_text())
    shas = [m["revision"] for m in provenance["models"]]
    assert shas == [hub.state.get_repo(ids[k]).branches["main"] for k in ("expert0", "expert1")]
    assert provenance["base_model"]["revision"] == hub.state.get_repo(ids["base"]).branches["main"]
    # The merged model loads with transformers.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "by-id")
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)


def test_a_merge_asks_the_hub_about_each_model_once(hub, tiny, tmp_path):
    """Each reference is resolved once: the manifest that validation reads (model info,
    configs, safetensors headers) also plans and pins the download, so the Hub gets one
    model-info request per model and one full download per weight file."""
    import re
    from collections import Counter

    ids = seed_llama_zoo(hub.state, tiny)
    hub.state.requests.clear()
    merge_models("ties", [ids["expert0"], ids["expert1"]], base=ids["base"],
                 out_dir=tmp_path / "out", params={"density": 0.5}, progress=False)
    info = Counter(m.group(1) for r in hub.state.requests
                   if (m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/.*)?", r.path)))
    repos = [ids["base"], ids["expert0"], ids["expert1"]]
    assert info == Counter(repos)
    downloads = Counter((r.path.split("/resolve/")[0].lstrip("/"), r.filename)
                        for r in hub.state.resolve_requests("GET") if not r.range)
    assert all(downloads[(repo, "model.safetensors")] == 1 for repo in repos), downloads
    assert max(downloads.values()) == 1, downloads


def test_cli_merge_by_repo_ids_refuses_incompatible_experts_before_download(hub, tiny, tmp_path,
                                                                          capsys):
    ids = seed_llama_zoo(hub.state, tiny)
    hub.state.add_repo("org/bert", tiny.bert)
    out = tmp_path / "out"
    code = main(["merge", "--method", "ties", "--base", ids["base"], ids["expert0"], "org/bert",
                 "--out", str(out)])
    assert code == 2
    assert "org/bert: architecture BertForSequenceClassification" in capsys.readouterr().err
    assert not out.exists()
    assert not any(f.endswith(".safetensors") for f in hub.state.full_downloads())
    assert main(["merge", "--method", "ties", "--base", ids["base"], ids["expert0"],
                 ids["expert1"], "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()


def test_lora_experts_by_repo_id_merge_their_full_deltas(hub, tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    ids = seed_llama_zoo(hub.state, tiny)
    result = merge_models("task_arithmetic", [ids["lora0"], ids["lora1"]], base=ids["base"],
                          out_dir=tmp_path / "merged", params={"lambda": 0.5}, progress=False)
    merged = _tensors(result.out_dir)
    base = _tensors(tiny.llama_base)
    # The reference: peft (loading the adapters from the test Hub) merges each adapter alone.
    deltas = []
    for key in ("lora0", "lora1"):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ids["base"]), ids[key])
        state = model.merge_and_unload().state_dict()
        deltas.append({k: state[k] - base[k] for k in base})
    for key in base:
        expected = base[key] + 0.5 * (deltas[0][key] + deltas[1][key])
        assert torch.allclose(merged[key], expected, atol=1e-5), key
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert sorted(changed) == sorted(f"model.layers.{i}.{m}.weight" for i in range(2)
                                     for m in ("mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj"))
    assert isinstance(AutoModelForCausalLM.from_pretrained(result.out_dir), LlamaForCausalLM)


def test_diffusers_unet_merge_by_repo_id(hub, tiny, tmp_path):
    from diffusers import UNet2DConditionModel

    hub.state.add_repo("org/pipe-base", tiny.pipeline_base, card={"tags": ["digits"],
                                                                  "library_name": "diffusers"})
    for i, folder in enumerate(tiny.pipeline_experts):
        hub.state.add_repo(f"org/pipe-{i}", folder, card={"tags": ["digits", "style"],
                                                           "base_model": "org/pipe-base"})
    from mergezoo.zoo.search import find_experts

    experts = find_experts(tag="style", base="org/pipe-base")
    assert experts == ["org/pipe-0", "org/pipe-1"]
    result = merge_models("average", experts, base="org/pipe-base", out_dir=tmp_path / "pipe",
                          component="unet", progress=False)
    merged = _tensors(result.out_dir / "unet", "diffusion_pytorch_model.safetensors")
    a = _tensors(tiny.pipeline_experts[0] / "unet", "diffusion_pytorch_model.safetensors")
    b = _tensors(tiny.pipeline_experts[1] / "unet", "diffusion_pytorch_model.safetensors")
    for key in a:
        assert torch.allclose(merged[key], (a[key] + b[key]) / 2, atol=1e-6), key
    assert (result.out_dir / "model_index.json").is_file()
    assert (result.out_dir / "scheduler" / "scheduler_config.json").is_file()
    # The diffusers client reads the pipeline's UNet from the test Hub, and the merged one loads.
    remote = UNet2DConditionModel.from_pretrained("org/pipe-0", subfolder="unet")
    assert torch.equal(remote.state_dict()["conv_in.weight"], a["conv_in.weight"])
    UNet2DConditionModel.from_pretrained(result.out_dir, subfolder="unet")


def test_diffusers_pipelines_are_validated_per_component(hub, tiny, tmp_path):
    import shutil

    from mergezoo.zoo.validate import validate_experts

    odd = tmp_path / "odd-pipe"
    shutil.copytree(tiny.pipeline_experts[0], odd)
    config = json.loads((odd / "unet" / "config.json").read_text())
    config["_class_name"] = "UNet2DModel"
    (odd / "unet" / "config.json").write_text(json.dumps(config))
    hub.state.add_repo("org/pipe-base", tiny.pipeline_base)
    hub.state.add_repo("org/odd", odd)
    hub.state.add_repo("org/llama", tiny.llama_base)
    with pytest.raises(IncompatibleModelsError) as info:
        validate_experts(["org/odd", "org/llama"], base="org/pipe-base", component="unet")
    message = str(info.value)
    assert "org/odd: unet is a UNet2DModel, but org/pipe-base's is a UNet2DConditionModel" in message
    assert "org/llama: is a full model, but org/pipe-base is a diffusers model" in message


def test_diffusers_lora_file_is_checked_against_the_base_kind(hub, tiny, tmp_path):
    from safetensors.torch import save_file

    from mergezoo.zoo.validate import validate_experts

    folder = tmp_path / "unet-lora"
    folder.mkdir()
    save_file({"unet.conv_in.lora_A.weight": torch.zeros(2, 4, 3, 3)},
              str(folder / "pytorch_lora_weights.safetensors"))
    hub.state.add_repo("org/unet-lora", folder)
    hub.state.add_repo("org/pipe-base", tiny.pipeline_base)
    hub.state.add_repo("org/llama", tiny.llama_base)
    validate_experts(["org/unet-lora"], base="org/pipe-base")
    with pytest.raises(IncompatibleModelsError, match="org/unet-lora: a diffusers LoRA file, but "
                                                      "org/llama is a full model"):
        validate_experts(["org/unet-lora"], base="org/llama")


def test_recipe_names_experts_by_tag_and_records_the_ids(hub, tiny, tmp_path):
    """`experts: {tag, base}` in a recipe is resolved on the Hub to the tagged full experts
    (not the LoRA ones, which lack the tag), merged like the same repo IDs given by hand, and
    the recipe written beside the merge lists the resolved IDs."""
    from mergezoo.merge import MergeRecipe, run_recipe

    ids = seed_llama_zoo(hub.state, tiny)
    recipe = MergeRecipe.from_yaml(f"""
merge_method: task_arithmetic
base_model: {ids['base']}
experts: {{tag: mergezoo-expert, base: {ids['base']}}}
parameters: {{lambda: 0.5}}
""")
    by_tag = run_recipe(recipe, out_dir=tmp_path / "by-tag", progress=False)
    by_id = merge_models("task_arithmetic", [ids["expert0"], ids["expert1"]], base=ids["base"],
                         out_dir=tmp_path / "by-id", params={"lambda": 0.5}, progress=False)
    assert by_tag.sha256 == by_id.sha256
    written = MergeRecipe.from_file(tmp_path / "by-tag" / "mergezoo_recipe.yaml")
    assert [m.model for m in written.models] == [ids["expert0"], ids["expert1"]]
    assert written.experts is None
