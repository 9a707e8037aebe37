"""Small builders shared by the method tests (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import copy
import dataclasses

import torch

from cdc.bundle import ModelBundle


def fresh(bundle: ModelBundle) -> ModelBundle:
    """A bundle sharing everything but the UNet, which training mutates (adds a LoRA)."""
    return dataclasses.replace(bundle, unet=copy.deepcopy(bundle.unet))


def random_latents(bundle: ModelBundle, n: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, C, h, w) seeded Gaussian latents of the bundle's UNet size, scaled to 0.5."""
    c = bundle.unet.config
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(n, c.in_channels, c.sample_size, c.sample_size, generator=g)


def teach(bundle: ModelBundle, prompts: list[str], latents: torch.Tensor, steps: int, seed: int = 0) -> ModelBundle:
    """A copy of `bundle` whose UNet was trained `steps` Adam steps to denoise latents[i] (N, C, h, w) for
    prompts[i], then frozen: a tiny model that draws different things for different prompts."""
    from cdc.losses import mse, noisy_latents, target_for, unet_pred

    bundle = fresh(bundle)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures start before the function-scoped `one_thread`
    ctx = bundle.text.encode(prompts)  # (N, L, D)
    gen = torch.Generator().manual_seed(seed)
    bundle.unet.train().requires_grad_(True)  # a shared fixture's UNet may have been frozen by a LoRA method
    opt = torch.optim.Adam(bundle.unet.parameters(), lr=3e-3)
    for _ in range(steps):
        x_t, noise, t = noisy_latents(bundle.scheduler, latents, gen)
        loss = mse(unet_pred(bundle.unet, x_t, t, ctx), target_for(bundle.scheduler, latents, noise, t))
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)  # no gradient left on the parameters
    bundle.unet.eval().requires_grad_(False)
    torch.set_num_threads(n_threads)
    return bundle
