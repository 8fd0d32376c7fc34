"""Build parallelism: the job runner keeps job order and gives the same results in worker
processes as in this one; LoRA adapters trained together in a vmap group learn what each
would learn alone with PEFT."""

from __future__ import annotations

import copy

import torch

from mergezoo.eval import get_benchmark
from mergezoo.eval.training import WORKERS_ENV, JobRunner, default_workers, resident


def _seeded_job(seed: int) -> tuple[int, list[float]]:
    """A job whose result depends on its seed only (and on torch's kernels)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(64, 64, generator=gen), torch.randn(64, 64, generator=gen)
    return seed, (a @ b).sum(0)[:4].tolist()


def _resident_job(key: str) -> int:
    return id(resident(key, lambda: object()))


def test_job_runner_keeps_order_and_results_for_any_worker_count():
    seeds = [5, 3, 8, 1, 0]
    with JobRunner(1) as inline:
        here = inline.map(_seeded_job, seeds)
    with JobRunner(2) as pool:
        there = pool.map(_seeded_job, seeds)
        again = pool.map(_seeded_job, seeds[::-1])  # the pool is reused
        ids = pool.map(_resident_job, ["k"] * 6)
    assert [s for s, _ in here] == seeds
    assert there == here
    assert again == here[::-1]
    assert 1 <= len(set(ids)) <= 2  # one cached object per worker process, not one per job


def test_default_workers(monkeypatch):
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert default_workers() == 3
    monkeypatch.delenv(WORKERS_ENV)
    assert 1 <= default_workers() <= 2


def test_lora_group_learns_what_each_adapter_learns_alone():
    from mergezoo.eval.benchmarks.digits_diffusion.lora import LoraMember, train_lora_group
    from mergezoo.eval.benchmarks.digits_diffusion.model import TrainSpec, add_lora, new_unet, train
    from mergezoo.eval.training import deterministic

    gen = torch.Generator().manual_seed(0)
    members = [LoraMember(torch.rand(20, 1, 8, 8, generator=gen),
                          torch.randint(0, 10, (20,), generator=gen), [style] * 20, seed=seed)
               for seed, style in ((0, "inverted"), (7, "framed"))]
    spec = TrainSpec(steps=6, batch_size=8, lr=5e-3)
    with deterministic(0):
        base = new_unet(seed=0)
        before = copy.deepcopy(base.state_dict())
        models, losses = train_lora_group(base, members, spec, rank=4, base_name="base")
        alone = []
        for m in members:
            model = add_lora(copy.deepcopy(base), 4, m.seed, "base")
            alone.append((model, train(model, m.images, m.digits, m.styles, spec, seed=m.seed)))
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    def lora(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in model.state_dict().items() if "lora_" in k}

    for grouped, grouped_losses, (single, single_losses) in zip(models, losses, alone):
        torch.testing.assert_close(grouped_losses, single_losses, rtol=1e-4, atol=1e-5)
        ours, theirs = lora(grouped), lora(single)
        assert ours.keys() == theirs.keys() and ours
        for key, value in theirs.items():
            torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-5)
    first, second = lora(models[0]), lora(models[1])
    assert any(not torch.equal(first[k], second[k]) for k in first)  # each learnt its own


def test_lora_groups_are_part_of_the_definition(monkeypatch):
    from mergezoo.eval.benchmarks.digits_diffusion import benchmark as digits_diffusion

    before = get_benchmark("digits-diffusion", size="tiny").spec.definition_hash()
    params = copy.deepcopy(digits_diffusion.SIZE_PARAMS)
    params["tiny"]["lora_groups"] = [3, 1]
    monkeypatch.setattr(digits_diffusion, "SIZE_PARAMS", params)
    bench = get_benchmark("digits-diffusion", size="tiny")
    assert bench.spec.definition_hash() != before
    fits = bench._fits()
    assert [f.role for f in fits] == ["expert", "expert", "multitask", "oracle", "oracle"]
    # experts and oracles share a schedule and may share a group; the multitask trains alone
    assert bench._groups() == [[0, 1, 3], [4], [2]]
