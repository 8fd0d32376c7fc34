"""Paths named by a model's own files never leave the model (issue 13, items 2 and 3): an
index, model_index.json or adapter_config.json naming an absolute path or `../`, and symbolic
links to files outside the folder (the stored Hub token), are refused, naming the entry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

from merge_helpers import assert_nothing_written, toy_state
from mergezoo.errors import UnsafePathError
from mergezoo.merge import merge_models
from mergezoo.merge.engine import copy_model_files
from mergezoo.merge.sources import open_source
from mergezoo.zoo.manifest import ModelManifest, inspect_local
from mergezoo.zoo.push import plan_push
from mergezoo.zoo.validate import _implied_lora_base


def _sharded(folder: Path, second_shard: str) -> Path:
    """A two-shard model whose index sends one tensor's shard to `second_shard`."""
    state = toy_state(1)
    keys = list(state)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: state[k] for k in keys[:3]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in keys[3:]}, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys[:3]}
    weight_map.update({k: second_shard for k in keys[3:]})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
    return folder


@pytest.mark.parametrize("how", ["absolute", "dotdot", "link"])
def test_an_index_naming_a_file_outside_the_model_is_refused_naming_the_entry(
        toy_zoo, tmp_path, how):
    secret = tmp_path / "private" / "other.safetensors"
    secret.parent.mkdir()
    shutil.copy(toy_zoo["base"] / "model.safetensors", secret)
    folder = tmp_path / "evil"
    second = {"absolute": str(secret), "dotdot": "../private/other.safetensors",
              "link": "model-00002-of-00002.safetensors"}[how]
    _sharded(folder, second)
    if how == "link":
        (folder / second).unlink()
        (folder / second).symlink_to(secret)
    out = tmp_path / "out"
    with pytest.raises(UnsafePathError) as info:
        merge_models("average", [toy_zoo["experts"][0], folder], out_dir=out, progress=False)
    message = str(info.value)
    if how == "link":  # the file the index names is a link leaving the folder
        assert "'model-00002-of-00002.safetensors' links outside the model folder" in message
    else:
        assert "weight_map['model." in message and "leaves the model folder" in message
    assert_nothing_written(out)
    with pytest.raises(UnsafePathError, match="weight_map"):  # the engine's own check
        open_source(folder)


def test_an_index_inside_the_model_still_merges(toy_zoo, tmp_path):
    folder = _sharded(tmp_path / "fine", "model-00002-of-00002.safetensors")
    assert len(open_source(folder).keys()) == len(toy_state(1))


def test_model_index_component_names_must_be_folder_names(tmp_path):
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "Pipe", "../../etc": ["diffusers", "UNet2DModel"]}))
    with pytest.raises(UnsafePathError, match=r"model_index.json component = '\.\./\.\./etc'"):
        inspect_local(folder)


def test_a_hub_adapter_naming_a_local_base_folder_is_refused(tmp_path):
    local = tmp_path / "secret-model"
    local.mkdir()
    adapter = ModelManifest(label="org/lora", kind="lora", files=[], repo_id="org/lora",
                            adapter_config={"base_model_name_or_path": str(local)})
    with pytest.raises(UnsafePathError, match="org/lora: adapter_config.json "
                       "base_model_name_or_path = .*secret-model"):
        _implied_lora_base([adapter], token=None, component=None)


def _with_token_link(model: Path, tmp_path: Path) -> Path:
    token = tmp_path / "hf_home" / "token"
    token.parent.mkdir()
    token.write_text("hf_secret_token_value")
    (model / "tokenizer.json").symlink_to(token)
    return token


def test_a_link_to_the_stored_token_is_never_copied_into_a_merge(toy_zoo, tmp_path):
    _with_token_link(toy_zoo["base"], tmp_path)
    out = tmp_path / "out"
    with pytest.raises(UnsafePathError, match=r"tokenizer.json is a link to a file outside"):
        merge_models("ties", toy_zoo["experts"], base=toy_zoo["base"], out_dir=out,
                     progress=False)
    assert_nothing_written(out)


def test_links_inside_the_model_are_copied(toy_zoo, tmp_path):
    (toy_zoo["base"] / "vocab.txt").write_text("a\nb\n")
    (toy_zoo["base"] / "tokenizer.json").symlink_to(toy_zoo["base"] / "vocab.txt")
    dst = tmp_path / "copy"
    dst.mkdir()
    copy_model_files(toy_zoo["base"], dst)
    assert (dst / "tokenizer.json").read_text() == "a\nb\n"


def test_a_push_never_plans_a_link_leaving_the_folder(tmp_path):
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "README.md").write_text("card")
    (folder / "model.safetensors").write_bytes(b"x")
    assert [f for f, _ in plan_push(folder, "org/m").files] == ["README.md", "model.safetensors"]
    _with_token_link(folder, tmp_path)
    with pytest.raises(UnsafePathError, match="tokenizer.json is a link to a file outside"):
        plan_push(folder, "org/m")
