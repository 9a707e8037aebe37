"""Diffusion training algebra shared by the methods: noising, targets, x0/eps from a UNet output.

Everything reads `scheduler.alphas_cumprod` and `scheduler.config.prediction_type` directly, with
per-sample timesteps, so any diffusers scheduler with a DDPM-style beta table works and no
scheduler is patched (the released DoCo code monkey-patched diffusers with a `step_batch`).
x_t is always the variance-preserving DDPM form the UNet was trained on, whatever sampler the
bundle uses later.
"""

from __future__ import annotations

import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_type(scheduler) -> str:
    """The scheduler's prediction type, checked against the three diffusers knows."""
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {kind!r} (known: {', '.join(PREDICTION_TYPES)})")
    return kind


def _coefs(scheduler, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), each (B, 1, 1, 1) in `like`'s dtype/device."""
    ab = scheduler.alphas_cumprod.to(device=t.device)[t].to(device=like.device, dtype=torch.float32)
    shape = (-1,) + (1,) * (like.ndim - 1)
    return ab.sqrt().view(shape).to(like.dtype), (1.0 - ab).sqrt().view(shape).to(like.dtype)


def noisy_latents(scheduler, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Draw noise and per-sample t ~ U{0..T-1}; return (x_t, noise, t), x_t like x0 (B, C, h, w)."""
    gen_device = generator.device
    # Draw on the generator's device so the stream (and so the run) is the same on CPU and GPU
    # callers that share a CPU generator.
    noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=torch.float32)
    n_train = int(scheduler.config.num_train_timesteps)
    t = torch.randint(0, n_train, (x0.shape[0],), generator=generator, device=gen_device)
    noise, t = noise.to(device=x0.device, dtype=x0.dtype), t.to(x0.device)
    return add_noise(scheduler, x0, noise, t), noise, t


def add_noise(scheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
    a, s = _coefs(scheduler, t, x0)
    return a * x0 + s * noise


def target_for(scheduler, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The denoising regression target for the scheduler's prediction type (eps, v or x0)."""
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    a, s = _coefs(scheduler, t, x0)
    return a * noise - s * x0  # v = sqrt(ab) eps - sqrt(1-ab) x0


def pred_x0(scheduler, model_output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """Predicted clean latent from a UNet output; not clamped (SD's clip_sample is off, and a clamp
    would zero the discriminator's gradient exactly where outputs are furthest off)."""
    kind = prediction_type(scheduler)
    if kind == "sample":
        return model_output
    a, s = _coefs(scheduler, t, x_t)
    if kind == "epsilon":
        return (x_t - s * model_output) / a
    return a * x_t - s * model_output  # v-prediction


def pred_eps(scheduler, model_output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """Predicted noise from a UNet output (what DoCo's first release showed the discriminator)."""
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return model_output
    a, s = _coefs(scheduler, t, x_t)
    if kind == "sample":
        return (x_t - a * model_output) / s
    return s * x_t + a * model_output  # v-prediction


def unet_pred(unet, x_t: Tensor, t: Tensor, context: Tensor) -> Tensor:
    """Raw UNet output (B, C, h, w) for noisy latents, timesteps (B,) and context (B, L, D)."""
    return unet(x_t, t, encoder_hidden_states=context, return_dict=False)[0]


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error computed in float32 (fp16 UNet outputs would lose the small residuals)."""
    return torch.nn.functional.mse_loss(a.float(), b.float())
