"""Tiny random-init transformers and diffusers models: experts saved with save_pretrained,
merged with merge_models, loaded back with from_pretrained, run forward, and compared with a
reference merge of the state dicts."""

from __future__ import annotations

import json

import pytest
import torch

from merge_helpers import load_folder
from merge_refs import flat, keep_magnitude, ref_gta
from mergezoo.merge import merge_models

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")


def perturbed_copies(model, n, scale=0.02, seed=0):
    """State dicts of n experts: the model's floating tensors plus small noise."""
    g = torch.Generator().manual_seed(seed)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    experts = []
    for _ in range(n):
        experts.append({k: (v + scale * torch.randn(v.shape, generator=g).to(v.dtype))
                        if v.is_floating_point() else v.clone() for k, v in base.items()})
    return base, experts


def save_family(model, root, n=2, **save_kw):
    """Save the base and n perturbed experts with save_pretrained; return paths and states."""
    base_state, expert_states = perturbed_copies(model, n)
    model.save_pretrained(root / "base", **save_kw)
    paths = []
    for i, state in enumerate(expert_states):
        model.load_state_dict(state)
        model.save_pretrained(root / f"expert{i}", **save_kw)
        paths.append(root / f"expert{i}")
    model.load_state_dict(base_state)
    return root / "base", paths, base_state, expert_states


def task_arithmetic_ref(base_state, expert_states, lam):
    return {k: (b.float() + lam * sum(e[k].float() - b.float() for e in expert_states)).to(b.dtype)
            if b.is_floating_point() else b for k, b in base_state.items()}


def assert_matches_reference(out, reference, factory, tmp_path, *, load, atol=1e-5,
                             subfolder=None):
    """The merged files equal the reference state dict (saved with save_pretrained, so on-disk
    tensor names match), and from_pretrained(out) holds the reference weights. Returns the
    loaded model and a model holding the reference weights."""
    expected = factory()
    expected.load_state_dict(reference)
    expected.save_pretrained(tmp_path / "reference-saved")
    want = load_folder(tmp_path / "reference-saved")
    merged = load_folder(out / subfolder if subfolder else out)
    assert merged.keys() == want.keys()
    for key, value in merged.items():
        assert value.dtype == want[key].dtype, key
        torch.testing.assert_close(value.double(), want[key].double(), atol=atol, rtol=1e-5)
    loaded = load(out).eval()
    got_state, want_state = loaded.state_dict(), expected.state_dict()
    assert got_state.keys() == want_state.keys()
    for key in got_state:
        torch.testing.assert_close(got_state[key].double(), want_state[key].double(),
                                   atol=atol, rtol=1e-5)
    return loaded, expected


# --- Llama --------------------------------------------------------------------------------------

def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_llama_ties_merge_loads_and_matches_reference(tmp_path):
    model = tiny_llama()
    base, experts, base_state, expert_states = save_family(model, tmp_path, n=2)
    out = tmp_path / "merged"
    merge_models("ties", experts, base=base, out_dir=out, params={"density": 0.4, "lambda": 1.1},
                 progress=False)
    reference = {}
    for key, b in base_state.items():
        models = [e[key] for e in expert_states]
        kept = [keep_magnitude(flat(m - b), 0.4) for m in models]
        reference[key] = ref_gta(b, models, [1.0, 1.0], sign_rule="sum", normalize=True,
                                 lambda_=1.1, kept=kept).float()
    loaded, expected = assert_matches_reference(
        out, reference, tiny_llama, tmp_path,
        load=transformers.AutoModelForCausalLM.from_pretrained)
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
        want = expected(input_ids=ids).logits
        base_logits = model(input_ids=ids).logits
    assert got.shape == (1, 5, 64) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, base_logits, atol=1e-4)


def test_llama_sharded_inputs_sharded_output_bf16(tmp_path):
    model = tiny_llama().to(torch.bfloat16)
    base, experts, base_state, expert_states = save_family(model, tmp_path, n=2,
                                                           max_shard_size="8KB")
    for folder in [base, *experts]:
        assert (folder / "model.safetensors.index.json").is_file()
        assert len(list(folder.glob("*.safetensors"))) > 1
    out = tmp_path / "merged"
    result = merge_models("task_arithmetic", experts, base=base, out_dir=out,
                          params={"lambda": 0.5}, max_shard_size="6KB", progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    assert set(result.files) == set(shards) | {"model.safetensors.index.json"}
    assert {v.dtype for v in load_folder(out).values()} == {torch.bfloat16}
    reference = task_arithmetic_ref(base_state, expert_states, 0.5)
    loaded, _ = assert_matches_reference(
        out, reference, lambda: tiny_llama().to(torch.bfloat16), tmp_path, atol=1e-2,
        load=lambda p: transformers.AutoModelForCausalLM.from_pretrained(p, dtype=torch.bfloat16))
    with torch.no_grad():
        logits = loaded(input_ids=torch.tensor([[2, 4, 6]])).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()

    # out_dtype overrides the inputs' dtype
    out32 = tmp_path / "merged32"
    merge_models("task_arithmetic", experts, base=base, out_dir=out32, params={"lambda": 0.5},
                 out_dtype=torch.float32, progress=False)
    assert {v.dtype for v in load_folder(out32).values()} == {torch.float32}
    loaded32 = transformers.AutoModelForCausalLM.from_pretrained(out32, dtype=torch.float32)
    with torch.no_grad():
        assert torch.isfinite(loaded32(input_ids=torch.tensor([[2, 4, 6]])).logits).all()


# --- BERT ---------------------------------------------------------------------------------------

def tiny_bert():
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=24)
    torch.manual_seed(1)
    return transformers.BertModel(config).eval()


def test_bert_merge_loads_and_runs(tmp_path):
    model = tiny_bert()
    base, experts, base_state, expert_states = save_family(model, tmp_path, n=3)
    out = tmp_path / "merged"
    merge_models("task_arithmetic", experts, base=base, out_dir=out, params={"lambda": 0.4},
                 progress=False)
    reference = task_arithmetic_ref(base_state, expert_states, 0.4)
    loaded, expected = assert_matches_reference(out, reference, tiny_bert, tmp_path,
                                                load=transformers.AutoModel.from_pretrained)
    ids = torch.tensor([[3, 7, 11, 2]])
    with torch.no_grad():
        got = loaded(input_ids=ids).last_hidden_state
        want = expected(input_ids=ids).last_hidden_state
    assert got.shape == (1, 4, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --- ViT ----------------------------------------------------------------------------------------

def tiny_vit():
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                                    num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=32, num_labels=5)
    torch.manual_seed(2)
    return transformers.ViTForImageClassification(config).eval()


def test_vit_merge_loads_and_runs(tmp_path):
    model = tiny_vit()
    base, experts, base_state, expert_states = save_family(model, tmp_path, n=2)
    out = tmp_path / "merged"
    merge_models("average", experts, out_dir=out, progress=False)
    reference = {k: (expert_states[0][k] + expert_states[1][k]) / 2 for k in base_state}
    loaded, expected = assert_matches_reference(
        out, reference, tiny_vit, tmp_path,
        load=transformers.AutoModelForImageClassification.from_pretrained)
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = loaded(pixel_values=pixels).logits
        want = expected(pixel_values=pixels).logits
    assert got.shape == (2, 5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --- diffusers UNet -----------------------------------------------------------------------------

def tiny_unet():
    torch.manual_seed(3)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def unet_forward(model):
    sample = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(sample, 10).sample


def test_unet_merge_loads_and_runs(tmp_path):
    model = tiny_unet()
    base, experts, base_state, expert_states = save_family(model, tmp_path, n=2)
    out = tmp_path / "merged"
    merge_models("task_arithmetic", experts, base=base, out_dir=out, params={"lambda": 0.7},
                 progress=False)
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    reference = task_arithmetic_ref(base_state, expert_states, 0.7)
    loaded, expected = assert_matches_reference(out, reference, tiny_unet, tmp_path,
                                                load=diffusers.UNet2DModel.from_pretrained)
    torch.testing.assert_close(unet_forward(loaded), unet_forward(expected), atol=1e-5, rtol=1e-5)


def make_pipeline_folder(root, name, unet_state, unet, *, vae_state=None):
    """A folder laid out like a diffusers pipeline: model_index.json, unet/, scheduler/, and
    (with `vae_state`) a vae/ sub-folder with weights of its own."""
    folder = root / name
    (folder / "model_index.json").parent.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}
    if vae_state is not None:
        unet.load_state_dict(vae_state)
        unet.save_pretrained(folder / "vae")
        index["vae"] = ["diffusers", "UNet2DModel"]
    unet.load_state_dict(unet_state)
    unet.save_pretrained(folder / "unet")
    (folder / "model_index.json").write_text(json.dumps(index))
    diffusers.DDPMScheduler(num_train_timesteps=10).save_pretrained(folder / "scheduler")
    return folder


def ties_full_density_ref(base_state, expert_states):
    """TIES at density 1 with unit weights, written with torch ops on whole tensors."""
    reference = {}
    for key, b in base_state.items():
        deltas = [e[key] - b for e in expert_states]
        elected = torch.where(sum(deltas) >= 0, 1.0, -1.0)
        agree = [torch.sign(d) == elected for d in deltas]
        total = sum(torch.where(a, d, torch.zeros_like(d)) for a, d in zip(agree, deltas))
        count = sum(a.float() for a in agree)
        reference[key] = b + total / torch.where(count == 0, torch.ones_like(count), count)
    return reference


def check_pipeline_merge(tmp_path, base, out, base_state, expert_states):
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    assert (out / "scheduler" / "scheduler_config.json").read_text() == \
        (base / "scheduler" / "scheduler_config.json").read_text()
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (base / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert not list(out.glob("*.safetensors")), "weights written outside the component folder"
    loaded, expected = assert_matches_reference(
        out, ties_full_density_ref(base_state, expert_states), tiny_unet, tmp_path,
        subfolder="unet", load=lambda p: diffusers.UNet2DModel.from_pretrained(p, subfolder="unet"))
    scheduler = diffusers.DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    assert scheduler.config.num_train_timesteps == 10
    torch.testing.assert_close(unet_forward(loaded), unet_forward(expected), atol=1e-5, rtol=1e-5)
    provenance = json.loads((out / "mergezoo_merge.json").read_text())
    assert provenance["component"] == "unet"
    assert set(provenance["output_sha256"]) == {"unet/diffusion_pytorch_model.safetensors"}


def test_unet_component_of_a_pipeline_folder(tmp_path):
    """Every input is a full pipeline; only unet/ is merged, the rest comes from the base."""
    unet = tiny_unet()
    base_state, expert_states = perturbed_copies(unet, 2)
    _, vae_states = perturbed_copies(unet, 3, scale=0.5, seed=9)
    base = make_pipeline_folder(tmp_path, "base", base_state, unet, vae_state=vae_states[0])
    experts = [make_pipeline_folder(tmp_path, f"expert{i}", s, unet, vae_state=vae_states[i + 1])
               for i, s in enumerate(expert_states)]
    out = tmp_path / "merged"
    merge_models("ties", experts, base=base, out_dir=out, component="unet",
                 params={"density": 1.0}, progress=False)
    check_pipeline_merge(tmp_path, base, out, base_state, expert_states)


def test_BUG_component_merge_checks_only_that_component(tmp_path):
    """With component="unet", only unet/ is merged and everything else is copied from the base,
    so experts that ship only unet/ (no vae/) must be accepted. merge_models calls
    zoo.validate.validate_experts(refs, base=base) without passing `component`, which compares
    every weight-bearing sub-folder and refuses the merge ("has no vae component in vae/")."""
    unet = tiny_unet()
    base_state, expert_states = perturbed_copies(unet, 2)
    _, vae_states = perturbed_copies(unet, 1, scale=0.5, seed=9)
    base = make_pipeline_folder(tmp_path, "base", base_state, unet, vae_state=vae_states[0])
    experts = [make_pipeline_folder(tmp_path, f"expert{i}", s, unet)
               for i, s in enumerate(expert_states)]
    out = tmp_path / "merged"
    merge_models("ties", experts, base=base, out_dir=out, component="unet",
                 params={"density": 1.0}, progress=False)
    check_pipeline_merge(tmp_path, base, out, base_state, expert_states)
