"""The white-box context attack: the whole text context, free in the text encoder's output space, fitted so that
the erased UNet denoises the family's images again.

  c* = argmin_c E_{x0, eps, t} || eps_theta(x_t, t, c) - eps ||^2      c: (L, D), from the encoder's own context
                                                                       of a neutral prompt; Adam, fresh noise/t

Every prompt, typed (prefix attack, Ring-A-Bell) or learned (concept inversion), reaches the UNet only as such a
context, so this attack's success rate bounds theirs from above: a model that it cannot bring the concept back in
has no text-side way back, and one it can has kept the concept in the UNet, whatever its text encoder does. It is
an adaptive attacker's upper bound, not a threat model: no user can type c*.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from cdc.attacks.config import ContextAttackConfig
from cdc.bundle import ModelBundle
from cdc.config import SampleParams
from cdc.losses import mse, noisy_latents, target_for, unet_pred
from cdc.sampler import sample


@dataclass(frozen=True)
class ContextResult:
    """The fitted context and the trace of the fit."""

    context: Tensor  # (1, L, D) float32, on the UNet's device
    losses: list[float]  # denoising loss of every update (that update's batch, noise and t)
    seconds: float
    kept: dict[int, Tensor] = field(default_factory=dict)  # steps -> the context after that many updates (1, L, D)


def fit_context(bundle: ModelBundle, latents: Tensor, init: Tensor, cfg: ContextAttackConfig,
                keep: Sequence[int] = ()) -> ContextResult:
    """Fit a context (1, L, D), from `init`, to the family's images `latents` (N, C, h, w) through `bundle.unet`
    (its LoRA, if any, applied); nothing of the model changes. `keep`: update counts after which a copy of the
    context is kept, the same context a fit of that many steps ends with (an attack budget curve)."""
    if bad := [k for k in keep if not 1 <= k <= cfg.steps]:
        raise ValueError(f"keep: {bad[0]} is not a step count between 1 and {cfg.steps}")
    if latents.ndim != 4 or latents.shape[0] == 0:
        raise ValueError(f"latents must be a non-empty (N, C, h, w) tensor, got {tuple(latents.shape)}")
    if init.ndim != 3 or init.shape[0] != 1:
        raise ValueError(f"init must be one context (1, L, D), got {tuple(init.shape)}")
    unet, sched, dtype = bundle.unet, bundle.scheduler, bundle.unet.dtype
    x_all = latents.to(device=unet.device, dtype=dtype)
    gen = torch.Generator("cpu").manual_seed(cfg.seed)
    context = init.detach().to(device=unet.device, dtype=torch.float32).clone().requires_grad_(True)
    opt = torch.optim.Adam([context], lr=cfg.lr)
    losses, kept, start = [], {}, time.perf_counter()
    for step in range(1, cfg.steps + 1):
        pick = torch.randint(0, x_all.shape[0], (cfg.batch_size,), generator=gen)
        x0 = x_all[pick.to(x_all.device)]  # (B, C, h, w)
        x_t, noise, t = noisy_latents(sched, x0, gen)
        pred = unet_pred(unet, x_t, t, context.to(dtype).expand(cfg.batch_size, -1, -1))
        loss = mse(pred, target_for(sched, x0, noise, t))
        (grad,) = torch.autograd.grad(loss, [context])  # only the context: no .grad lands on the model
        context.grad = grad
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step in keep:
            kept[step] = context.detach().clone()
    return ContextResult(context.detach(), losses, time.perf_counter() - start, kept)


def sample_with_context(bundle: ModelBundle, context: Tensor, seeds: list[int], cfg: SampleParams) -> np.ndarray:
    """Images uint8 (S, H, W, 3) of one context (1, L, D), one per seed."""
    contexts = context.to(bundle.unet.dtype).expand(len(seeds), -1, -1)
    with torch.no_grad():
        return sample(bundle, contexts, list(seeds), cfg, progress=False)
