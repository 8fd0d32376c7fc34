"""Cards of Hub merges (transformers, diffusers component, PEFT LoRA out), merge --push in one
commit, and `mergezoo reproduce` from a folder and from a repo ID, through the test Hub."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergezoo.cli import main
from mergezoo.errors import ReproduceError
from mergezoo.model_cards import reproduce

from zoo.conftest import WRITE_TOKEN
from zoo.helpers import seed_llama_zoo

from .card_checks import parse_card


def _seed_licensed(hub, tiny):
    ids = seed_llama_zoo(hub.state, tiny)
    for key in ("base", "expert0", "expert1"):  # licenses on the cards the merge inherits
        repo = hub.state.get_repo(ids[key])
        card = repo.resolve("main").files["README.md"].data.decode()
        hub.state.add_repo(ids[key], {"README.md": card.replace("---\n", "---\nlicense: mit\n", 1)
                                      .encode()})
    return ids


def test_merge_push_puts_card_and_weights_in_one_commit(hub, tiny, tmp_path, monkeypatch, capsys):
    ids = _seed_licensed(hub, tiny)
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    out = tmp_path / "merged"
    assert main(["merge", "--method", "ties", "--base", ids["base"], ids["expert0"],
                 ids["expert1"], "--set", "lambda=0.8", "--out-dtype", "bfloat16", "--out",
                 str(out), "--push", "org/merged", "-q"]) == 0
    assert "pushed 6 file(s) to org/merged in one commit" in capsys.readouterr().out
    assert len(hub.state.commit_posts) == 1
    pushed = sorted(p for _, p in hub.state.commit_posts[0]["operations"])
    assert pushed == ["README.md", "config.json", "generation_config.json", "mergezoo_merge.json",
                      "mergezoo_recipe.yaml", "model.safetensors"]
    assert pushed == sorted(p.name for p in out.iterdir())
    head = hub.state.get_repo("org/merged").resolve("main")
    card, front = parse_card(out / "README.md")
    assert head.files["README.md"].data == (out / "README.md").read_bytes()
    assert front["base_model"] == [ids["base"], ids["expert0"], ids["expert1"]]
    assert front["base_model_relation"] == "merge" and front["license"] == "mit"
    assert front["pipeline_tag"] == "text-generation" and front["library_name"] == "transformers"
    assert "mergezoo reproduce org/merged" in str(card)
    for sha in (hub.state.get_repo(ids[k]).branches["main"] for k in ("base", "expert0", "expert1")):
        assert sha in str(card)
    # No local path and no token in any pushed file.
    from huggingface_hub import constants

    for path, blob in head.files.items():
        text = blob.data.decode("latin-1")
        for secret in (str(tmp_path), str(constants.HF_HOME), WRITE_TOKEN, str(tiny.root)):
            assert secret not in text, (path, secret)
    provenance = json.loads(head.files["mergezoo_merge.json"].data)
    assert provenance["hyperparameters"]["lambda"] == 0.8
    # out_dtype reaches config.json, so dtype="auto" loads the merge as bfloat16.
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained("org/merged", dtype="auto").dtype == torch.bfloat16

    # reproduce: from the repo ID, then from the folder.
    assert main(["reproduce", "org/merged", "-q"]) == 0
    assert capsys.readouterr().out.startswith("REPRODUCED: 3 file(s) match the card of org/merged")
    assert main(["reproduce", str(out), "--out", str(tmp_path / "again"), "-q"]) == 0
    assert "REPRODUCED" in capsys.readouterr().out
    assert load_file(str(tmp_path / "again" / "model.safetensors")).keys() == \
        load_file(str(out / "model.safetensors")).keys()

    # One tensor altered in the pushed repo: reproduce names the file and fails.
    tensors = load_file(str(out / "model.safetensors"))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += 1
    altered = tmp_path / "altered.safetensors"
    save_file(tensors, str(altered), metadata={"merged_by": "mergezoo"})
    hub.state.add_repo("org/merged", {"model.safetensors": altered.read_bytes()})
    assert main(["reproduce", "org/merged", "-q"]) == 1
    report = capsys.readouterr().out
    assert "NOT REPRODUCED: 1 of 3 file(s) differ" in report
    assert "  model.safetensors: the published file has sha256" in report


def test_reproduce_folder_names_an_altered_tensor_and_a_changed_local_input(tiny, tmp_path, capsys):
    import shutil

    inputs = tmp_path / "inputs"
    for name, src in [("base", tiny.llama_base), ("a", tiny.llama_experts[0]),
                      ("b", tiny.llama_experts[1])]:
        shutil.copytree(src, inputs / name)
    out = tmp_path / "runs" / "merged"
    assert main(["merge", "--method", "dare_ties", "--base", str(inputs / "base"),
                 str(inputs / "a"), str(inputs / "b"), "--set", "density=0.5", "--seed", "3",
                 "--out", str(out), "-q"]) == 0
    card, front = parse_card(out / "README.md")
    assert "base_model" not in front and "local: `../../inputs/a`" in str(card)
    report = reproduce(out)
    assert report.ok and "model.safetensors" in report.compared and "config.json" in report.compared

    tensors = load_file(str(out / "model.safetensors"))
    key = sorted(tensors)[-1]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[-1] *= 2
    save_file(tensors, str(out / "model.safetensors"), metadata={"merged_by": "mergezoo"})
    assert main(["reproduce", str(out), "-q"]) == 1
    printed = capsys.readouterr().out
    assert "model.safetensors: the published file has sha256" in printed
    assert "config.json" not in printed

    weights = load_file(str(inputs / "a" / "model.safetensors"))
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1
    save_file(weights, str(inputs / "a" / "model.safetensors"))
    with pytest.raises(ReproduceError, match=r"input '../../inputs/a': its weight files differ "
                                             r"from the hashes the card records: model.safetensors"):
        reproduce(out)


def test_diffusers_component_card(hub, tiny, tmp_path):
    hub.state.add_repo("org/pipe-base", tiny.pipeline_base, card={"library_name": "diffusers",
                                                                  "license": "openrail"})
    for i, folder in enumerate(tiny.pipeline_experts):
        hub.state.add_repo(f"org/pipe-{i}", folder, card={"base_model": "org/pipe-base",
                                                           "license": "openrail"})
    out = tmp_path / "pipe"
    assert main(["merge", "--method", "task_arithmetic", "--base", "org/pipe-base", "org/pipe-0",
                 "org/pipe-1", "--component", "unet", "--out", str(out), "-q"]) == 0
    card, front = parse_card(out / "README.md")
    assert front["library_name"] == "diffusers" and front["license"] == "openrail"
    assert front["base_model"] == ["org/pipe-base", "org/pipe-0", "org/pipe-1"]
    text = str(card)
    assert "DiffusionPipeline.from_pretrained('./pipe')" in text
    assert "UNet2DConditionModel.from_pretrained('./pipe', subfolder='unet')" in text
    assert "unet/diffusion_pytorch_model.safetensors" in text
    assert reproduce(out).ok


def test_peft_lora_output_card(tiny, tmp_path):
    out = tmp_path / "lora-out"
    assert main(["merge", "--method", "ties", "--base", str(tiny.llama_base),
                 str(tiny.llama_experts[0]), str(tiny.llama_experts[1]), "--output", "lora",
                 "--rank", "4", "--out", str(out), "-q"]) == 0
    card, front = parse_card(out / "README.md")
    assert front["library_name"] == "peft" and "lora" in front["tags"]
    assert "PeftModel.from_pretrained(base, './lora-out')" in str(card)
    provenance = json.loads((out / "mergezoo_merge.json").read_text())
    assert provenance["output"] == "lora" and provenance["out_dir"] == "lora-out"
    assert set(provenance["output_sha256"]) == {"adapter_model.safetensors"}
    assert json.loads((out / "lora_errors.json").read_text())["out_dir"] == "."
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] is None  # a local base: no path written
    for f in out.iterdir():
        assert str(tmp_path) not in f.read_text(errors="replace") and str(tiny.root) not in \
            f.read_text(errors="replace"), f.name
    report = reproduce(out)
    assert report.ok and {"adapter_model.safetensors", "adapter_config.json",
                          "lora_errors.json"} <= set(report.compared)


def test_reproduce_from_the_hub_refuses_local_inputs_by_name(hub, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    out = tmp_path / "local-merge"
    assert main(["merge", "--method", "average", str(tiny.llama_experts[0]),
                 str(tiny.llama_experts[1]), "--out", str(out), "--push", "org/local-merge",
                 "-q"]) == 0
    _, front = parse_card(out / "README.md")
    assert "base_model" not in front
    with pytest.raises(ReproduceError, match=r"org/local-merge: input '.*llama-expert-0' was a "
                                             r"local folder when merged, so it cannot be fetched"):
        reproduce("org/local-merge")


def test_push_names_the_repo_in_an_untouched_card_and_keeps_an_edited_one(hub, tiny, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    out = tmp_path / "merged"
    assert main(["merge", "--method", "average", str(tiny.llama_experts[0]),
                 str(tiny.llama_experts[1]), "--out", str(out), "-q"]) == 0
    assert "mergezoo reproduce ./merged" in (out / "README.md").read_text()
    assert main(["push", str(out), "org/soup"]) == 0
    pushed = hub.state.get_repo("org/soup").resolve("main").files["README.md"].data.decode()
    assert "mergezoo reproduce org/soup" in pushed and "reproduce ./merged" not in pushed
    assert "from_pretrained('org/soup'" in pushed
    parse_card(out / "README.md")
    edited = (out / "README.md").read_text() + "\nA note by hand.\n"
    (out / "README.md").write_text(edited)
    assert main(["push", str(out), "org/soup2"]) == 0
    assert hub.state.get_repo("org/soup2").resolve("main").files["README.md"].data.decode() == edited
