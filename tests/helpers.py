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
