"""Relearning: the fine-tune starts from exactly the erased model, learns the concept back, and leaves the erased
model as it was."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import fresh, random_latents, teach

from cdc.anchors import erase_pairs
from cdc.lora import add_lora, lora_parameters, tuner_layers
from cdc.losses import mse, noisy_latents, target_for, unet_pred
from cdc.stages.relearn import erase_and_relearn, merged_unet, relearn
from cdc.targets import returned_at

PROMPTS = ["a church", "a house"]


def _inputs(bundle, n: int = 2):
    c = bundle.unet.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, c.in_channels, c.sample_size, c.sample_size, generator=g)
    return x, torch.tensor([50, 700])[:n], bundle.text.encode(PROMPTS[:n])


def test_merged_unet_draws_what_the_lora_unet_draws(tiny_world_bundle, one_thread):
    model = fresh(tiny_world_bundle)
    add_lora(model.unet, "xattn", 2, None, seed=0)
    with torch.no_grad():
        for p in lora_parameters(model.unet):
            p.normal_(0, 0.2)  # B starts at zero: make the LoRA change the output
        x, t, ctx = _inputs(model)
        with_lora = unet_pred(model.unet, x, t, ctx)
        merged = merged_unet(model.unet)
        assert not tuner_layers(merged) and not getattr(merged, "peft_config", None)
        assert torch.allclose(unet_pred(merged, x, t, ctx), with_lora, atol=1e-5)
        assert tuner_layers(model.unet)  # the erased model keeps its LoRA
        assert not torch.allclose(unet_pred(fresh(tiny_world_bundle).unet, x, t, ctx), with_lora, atol=1e-3)


def _error(model, latents, ctx) -> float:
    """The denoising error on fixed noise and timesteps: what relearning drives down."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        x_t, noise, t = noisy_latents(model.scheduler, latents, g)
        return float(mse(unet_pred(model.unet, x_t, t, ctx), target_for(model.scheduler, latents, noise, t)))


@pytest.mark.slow
def test_relearn_learns_the_concept_back_and_leaves_the_erased_model(tiny_world_bundle, smoke_params, one_thread):
    """The rows come at the checkpoints, step 0 is the erased model itself, the denoising error on the concept
    falls, and the erased model's weights are untouched; the same seed gives the same curve."""
    latents = random_latents(tiny_world_bundle, 4, seed=5)
    erased = teach(tiny_world_bundle, PROMPTS, latents[:2], steps=2)  # any fixed model stands in for an erasure
    ctx = erased.text.encode([PROMPTS[i % 2] for i in range(4)])
    before = [p.detach().clone() for p in erased.unet.parameters()]
    seen = []

    def rates(model) -> dict:
        seen.append(model.unet)
        return {"in_set": -_error(model, latents, ctx), "out_of_set": 0.0}

    cfg = dataclasses.replace(smoke_params.relearn.run_config(), lr=1e-2, batch_size=4, lora_rank=8)
    rows = relearn(erased, latents, [0, 1, 0, 1], PROMPTS, cfg, [0, 5, 40], rates, progress=False)
    assert [r["step"] for r in rows] == [0, 5, 40] and rows[0]["loss"] is None
    assert rows[0]["in_set"] == pytest.approx(-_error(erased, latents, ctx), rel=1e-5)
    assert rows[-1]["in_set"] > rows[0]["in_set"]  # the error on the concept's images fell
    assert seen[0] is not erased.unet and all(u is seen[0] for u in seen)  # one copy, fine-tuned along
    assert all(torch.equal(a, b) for a, b in zip(before, erased.unet.parameters(), strict=True))
    again = relearn(erased, latents, [0, 1, 0, 1], PROMPTS, cfg, [0, 5, 40], rates, progress=False)
    assert [r["in_set"] for r in again] == [r["in_set"] for r in rows]
    with pytest.raises(ValueError, match="checkpoints must be increasing"):
        relearn(erased, latents, None, PROMPTS, cfg, [5, 5], rates, progress=False)


def test_returned_at_is_the_first_checkpoint_at_the_rate():
    rows = [{"step": 0, "in_set": 0.0}, {"step": 10, "in_set": 0.4}, {"step": 20, "in_set": 0.5},
            {"step": 40, "in_set": 0.3}]
    assert returned_at(rows, 0.5) == 20
    assert returned_at(rows, 0.9) is None


def test_erase_and_relearn_leaves_no_lora_in_the_bundle(tiny_world_bundle, world, smoke_params, one_thread):
    bundle = fresh(tiny_world_bundle)
    pairs = erase_pairs(world, "church", [])
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    samples = {"anchor_images": images, "anchor_index": np.arange(4) % 2,
               "target_images": images, "target_index": np.arange(4) % 2}
    cfg = dataclasses.replace(smoke_params.erase.esd, steps=2, batch_size=2)
    calls = []

    def rates(model) -> dict:
        calls.append(model.unet)
        return {"in_set": float(len(calls) > 1), "out_of_set": 0.0}

    out = erase_and_relearn(bundle, "esd", cfg, pairs, samples, smoke_params.relearn.run_config(), [0, 1, 2],
                            rates, 0.5, progress=False)
    assert [r["step"] for r in out["curve"]] == [0, 1, 2] and out["returned_at"] == 1
    assert len(calls) == 3 and all(u is not bundle.unet for u in calls)  # a copy is fine-tuned
    assert not tuner_layers(bundle.unet)  # the erasure's LoRA is gone from the bundle
