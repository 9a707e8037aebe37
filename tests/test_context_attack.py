"""The white-box context attack: it revives a plainly erased tiny model, does not make a model that never learned
the concept draw it, and never changes the model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import fresh, random_latents, teach

from cdc.attacks.config import ContextAttackConfig
from cdc.attacks.context import fit_context, sample_with_context
from cdc.losses import add_noise, mse, target_for, unet_pred
from cdc.methods.ca import train_ca
from cdc.stages.attack import context_budgets

pytestmark = pytest.mark.usefixtures("one_thread")

CHURCH, HOUSE = "a small church", "a red house"
CFG = ContextAttackConfig(steps=60, lr=0.05, batch_size=2, seed=0)


def denoising_loss(bundle, context: torch.Tensor, x: torch.Tensor) -> float:
    """Mean denoising loss of `bundle` on latents x (N, C, h, w) under one context (1, L, D), on fixed draws with t
    in the upper range, where the text decides what is drawn."""
    gen = torch.Generator().manual_seed(123)
    losses = []
    with torch.no_grad():
        for _ in range(8):
            noise = torch.randn(x.shape, generator=gen)
            t = torch.randint(400, 1000, (x.shape[0],), generator=gen)
            ctx = context.expand(x.shape[0], -1, -1)
            pred = unet_pred(bundle.unet, add_noise(bundle.scheduler, x, noise, t), t, ctx)
            losses.append(mse(pred, target_for(bundle.scheduler, x, noise, t)))
    return float(torch.stack(losses).mean())


@pytest.fixture(scope="module")
def models(tiny_world_bundle, smoke_params):
    """(taught, erased, never, X): a tiny UNet taught X for CHURCH and Y for HOUSE; that model with CHURCH erased
    towards HOUSE by CA (a cross-attention LoRA: the prompt lost the concept, the UNet may still hold it); and a
    model taught Y for both prompts (it never saw X)."""
    x = random_latents(tiny_world_bundle, n=2, seed=1)
    y = random_latents(tiny_world_bundle, n=2, seed=2)
    taught = teach(tiny_world_bundle, [CHURCH, CHURCH, HOUSE, HOUSE], torch.cat([x, y]), steps=100)
    erased = fresh(taught)
    cfg = dataclasses.replace(smoke_params.erase.ca, steps=30, batch_size=2, lr=1e-2, prior_weight=0.0,
                              lora_rank=4, log_every=1000)
    train_ca(erased, [CHURCH], [HOUSE], y, cfg, progress=False)
    never = teach(tiny_world_bundle, [CHURCH, CHURCH, HOUSE, HOUSE], torch.cat([y, y]), steps=100)
    return taught, erased, never, x


@pytest.mark.slow
def test_context_attack_revives_a_plainly_erased_model(models) -> None:
    taught, erased, _, x = models
    prompt = erased.text.encode([CHURCH])
    knew, lost = denoising_loss(taught, prompt, x), denoising_loss(erased, prompt, x)
    assert lost > knew + 0.003  # the erasure took X away from the prompt
    before = {k: v.clone() for k, v in erased.unet.state_dict().items()}
    fit = fit_context(erased, x, erased.text.encode([""]), CFG)
    attacked = denoising_loss(erased, fit.context, x)
    assert attacked < lost - 0.5 * (lost - knew), (knew, lost, attacked)  # most of the way back
    assert len(fit.losses) == CFG.steps  # each a fresh (noise, t) draw: the evaluation above is what falls
    assert all(torch.equal(v, before[k]) for k, v in erased.unet.state_dict().items())
    assert all(p.grad is None for p in erased.unet.parameters())


@pytest.mark.slow
def test_context_attack_does_not_teach_a_model_that_never_knew(models) -> None:
    taught, erased, never, x = models
    knew = denoising_loss(taught, taught.text.encode([CHURCH]), x)
    fit_erased = fit_context(erased, x, erased.text.encode([""]), CFG)
    fit_never = fit_context(never, x, never.text.encode([""]), CFG)
    revived, nothing = denoising_loss(erased, fit_erased.context, x), denoising_loss(never, fit_never.context, x)
    # The same search gets the erased model near the taught one and leaves the naive one far from it.
    assert nothing - knew > 2 * (revived - knew), (knew, revived, nothing)


def test_context_attack_is_seeded_and_samples(tiny_world_bundle, smoke_params) -> None:
    bundle, x = tiny_world_bundle, random_latents(tiny_world_bundle, n=2, seed=1)
    cfg = dataclasses.replace(CFG, steps=3)
    a = fit_context(bundle, x, bundle.text.encode([""]), cfg)
    b = fit_context(bundle, x, bundle.text.encode([""]), cfg)
    assert torch.equal(a.context, b.context) and a.losses == b.losses
    assert not torch.equal(a.context, bundle.text.encode([""]))
    sampler = dataclasses.replace(smoke_params.sample, steps=2, precision="fp32", batch_size=2)
    images = sample_with_context(bundle, a.context, [0, 1, 2], sampler)
    assert images.shape[0] == 3 and images.dtype.name == "uint8"
    with pytest.raises(ValueError, match="one context"):
        fit_context(bundle, x, bundle.text.encode(["", ""]), cfg)
    with pytest.raises(ValueError, match=">= 1"):
        ContextAttackConfig(steps=0, lr=0.01, batch_size=2, seed=0)


def test_kept_contexts_are_the_shorter_fits(tiny_world_bundle) -> None:
    """The budget curve's contexts are exactly what a fit of that many steps ends with."""
    bundle, x = tiny_world_bundle, random_latents(tiny_world_bundle, n=2, seed=1)
    init = bundle.text.encode([""])
    cfg = dataclasses.replace(CFG, steps=4)
    fit = fit_context(bundle, x, init, cfg, keep=[1, 2])
    assert sorted(fit.kept) == [1, 2]
    for steps, context in fit.kept.items():
        assert torch.equal(context, fit_context(bundle, x, init, dataclasses.replace(cfg, steps=steps)).context)
    with pytest.raises(ValueError, match="between 1 and 4"):
        fit_context(bundle, x, init, cfg, keep=[5])
    assert context_budgets(100) == [25, 50, 100] and context_budgets(2) == [1, 2] and context_budgets(1) == [1]
