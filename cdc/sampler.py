"""Seeded DDIM sampling with classifier-free guidance, for every preset."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler
from torch import Tensor, nn
from tqdm.auto import tqdm

from cdc.bundle import ModelBundle
from cdc.config import SampleParams
from cdc.errors import CdcError
from cdc.system import resolve_precision


def sample(
    bundle: ModelBundle,
    prompts: Sequence[str] | Tensor,
    seeds: Sequence[int],
    cfg: SampleParams,
    *,
    unet: nn.Module | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Generate one image per (prompt, seed): uint8 (B, H, W, 3).

    `prompts` may also be contexts (B, L, D) already encoded (an attack's adversarial embeddings); the
    unconditional context is still the bundle's `encode([""])`.

    Image i depends only on (prompts[i], seeds[i]): its initial latent and every DDIM eta-noise draw
    come from its own CPU generator seeded with seeds[i], so batch size and batch mates do not matter
    (up to float round-off of batched kernels). `unet` overrides the bundle's UNet (e.g. LoRA-wrapped).
    cfg is the `sample` section: DDIM steps, guidance (1 skips the unconditional pass), eta (0 is
    deterministic DDIM, 1 ancestral-like), batch_size and precision ("fp32", "bf16": a float32 UNet under
    bf16 autocast, or "auto": see `resolve_precision`); its seed is not used here (seeds are per image).
    A non-finite latent (a LoRA with NaN weights, say) raises CdcError instead of giving black images.
    """
    if isinstance(prompts, Tensor):
        if prompts.ndim != 3:
            raise ValueError(f"sample: contexts must be (B, L, D), got {tuple(prompts.shape)}")
    else:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [int(s) for s in seeds]
    if not len(prompts):
        raise ValueError("sample: the prompt list is empty")
    if len(seeds) != len(prompts):
        raise ValueError(f"sample: got {len(prompts)} prompts but {len(seeds)} seeds (need one seed per prompt)")
    model = unet if unet is not None else bundle.unet
    autocast = resolve_precision(cfg.precision, bundle.device) == "bf16" and bundle.dtype == torch.float32
    scheduler = DDIMScheduler.from_config(bundle.scheduler.config)
    scheduler.set_timesteps(cfg.steps, device=bundle.device)
    chunks = []
    starts = range(0, len(prompts), cfg.batch_size)
    with torch.inference_mode():
        for i in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
            chunk = slice(i, i + cfg.batch_size)
            context = prompts[chunk] if isinstance(prompts, Tensor) else bundle.text.encode(prompts[chunk])
            chunks.append(
                _sample_batch(bundle, model, scheduler, context, seeds[chunk], cfg.guidance, cfg.eta, autocast)
            )
    return np.concatenate(chunks)


def _sample_batch(
    bundle: ModelBundle,
    unet: nn.Module,
    scheduler: DDIMScheduler,
    context: Tensor,
    seeds: list[int],
    guidance: float,
    eta: float,
    autocast: bool,
) -> np.ndarray:
    """DDIM loop for one batch of contexts (B, L, D); latents are kept in float32, the UNet runs in its own dtype
    (or bf16 autocast)."""
    device, dtype = bundle.device, bundle.dtype
    side = int(bundle.unet.config.sample_size)
    shape = (bundle.codec.channels, side, side)
    # CPU generators: the same seed gives the same noise on every device.
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    latents = _noise(gens, shape, device) * scheduler.init_noise_sigma  # (B, C, h, w)
    context = context.detach().to(device=device, dtype=dtype)  # (B, L, D)
    use_cfg = guidance != 1.0
    if use_cfg:
        uncond = bundle.text.encode([""]).to(device=device, dtype=dtype)
        context = torch.cat([uncond.expand_as(context), context])  # (2B, L, D)
    for t in scheduler.timesteps:
        x = torch.cat([latents, latents]) if use_cfg else latents
        x = scheduler.scale_model_input(x, t).to(dtype)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = unet(x, t, encoder_hidden_states=context).sample.float()
        if use_cfg:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance * (out_cond - out_uncond)
        noise = _noise(gens, shape, device) if eta > 0 else None
        latents = scheduler.step(out, t, latents, eta=eta, variance_noise=noise).prev_sample
    if not torch.isfinite(latents).all():
        raise CdcError("sampling produced non-finite latents (NaN or inf): the UNet or its LoRA holds non-finite "
                       "weights, or the sampler settings overflow")
    images = bundle.codec.decode(latents.to(dtype)).float()  # (B, 3, H, W) in [-1, 1]
    return to_uint8(images)


def _noise(gens: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> Tensor:
    """One standard-normal draw per sample from its own generator: (B, *shape) float32 on device."""
    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)


def to_uint8(images: Tensor) -> np.ndarray:
    """Float images (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
