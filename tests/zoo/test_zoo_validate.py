"""Validation before download: incompatible experts are refused from headers alone."""

from __future__ import annotations

import pytest

from mergezoo.errors import IncompatibleModelsError, UnsafeCheckpointError
from mergezoo.zoo.validate import validate_experts

from .helpers import seed_llama_zoo
from .models import LLAMA_BASE_ID


def test_compatible_experts_pass_without_downloading_weights(hub, tiny):
    ids = seed_llama_zoo(hub.state, tiny)
    validate_experts([ids["expert0"], ids["expert1"], ids["lora0"], ids["lora1"]], base=ids["base"])
    assert not any(f.endswith(".safetensors") for f in hub.state.full_downloads())
    ranged = [r for r in hub.state.resolve_requests("GET") if r.filename.endswith(".safetensors")]
    assert ranged and all(r.range and r.range.startswith("bytes=0-") for r in ranged)


def test_incompatible_experts_are_refused_with_every_problem_and_no_weight_download(hub, tiny):
    ids = seed_llama_zoo(hub.state, tiny)
    hub.state.add_repo("org/bert", tiny.bert, card={"tags": ["math"]})
    hub.state.add_repo("org/llama-big-vocab", tiny.llama_big_vocab,
                       card={"tags": ["math"], "base_model": "org/another-base"})
    with pytest.raises(IncompatibleModelsError) as info:
        validate_experts([ids["expert0"], "org/bert", "org/llama-big-vocab"], base=ids["base"])
    message = str(info.value)
    assert "org/bert: architecture BertForSequenceClassification, but org/llama-base is " \
           "LlamaForCausalLM" in message
    assert "org/llama-big-vocab: vocabulary size 96, but org/llama-base has 64" in message
    assert "org/llama-big-vocab: different base model: it was trained from org/another-base" in message
    assert "shape mismatch" in message and "model.embed_tokens.weight [96, 32] vs [64, 32]" in message
    assert "org/bert:" in message and "tensor(s) of org/llama-base missing" in message
    assert "org/llama-math-0" not in message  # the compatible expert is not blamed
    # Every safetensors request was a header read (a Range request), never a download.
    weights = [r for r in hub.state.resolve_requests("GET") if r.filename.endswith(".safetensors")]
    assert weights and all(r.range for r in weights)
    assert not any(f.endswith(".safetensors") for f in hub.state.full_downloads())


def test_lora_targeting_layers_the_base_lacks_is_refused(hub, tiny):
    ids = seed_llama_zoo(hub.state, tiny)
    hub.state.add_repo("org/bert", tiny.bert)
    with pytest.raises(IncompatibleModelsError) as info:
        validate_experts([ids["lora0"]], base="org/bert")
    assert "org/llama-lora-0: adapter targets 4 layer(s) that org/bert lacks" in str(info.value)
    assert f"trained from {LLAMA_BASE_ID}, not org/bert" in str(info.value)


def test_lora_base_is_implied_by_adapter_config(hub, tiny):
    ids = seed_llama_zoo(hub.state, tiny)
    validate_experts([ids["lora0"], ids["lora1"]])  # base org/llama-base read from adapter_config
    assert any(r.path.startswith(f"/api/models/{LLAMA_BASE_ID}") for r in hub.state.requests)


def test_local_folders_are_validated_from_headers(tiny):
    validate_experts([str(tiny.llama_experts[0]), str(tiny.llama_experts[1])],
                     base=str(tiny.llama_base))
    with pytest.raises(IncompatibleModelsError, match="vocabulary size 96"):
        validate_experts([str(tiny.llama_big_vocab)], base=str(tiny.llama_base))


def test_pickle_only_expert_is_refused_when_pickles_are_not_allowed(hub, tiny):
    seed_llama_zoo(hub.state, tiny)
    hub.state.add_repo("org/pickled", {"config.json": (tiny.llama_base / "config.json").read_bytes(),
                                       "pytorch_model.bin": b"not really a pickle"})
    with pytest.raises(UnsafeCheckpointError, match=r"org/pickled \(pytorch_model.bin\)"):
        validate_experts(["org/pickled"], base=LLAMA_BASE_ID, allow_pickle=False)
    validate_experts(["org/pickled"], base=LLAMA_BASE_ID)  # default: left to resolve_model
