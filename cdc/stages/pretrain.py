"""Pretrain the world model: a small conditional UNet on the emoji renders and their captions."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm

from cdc.attention import attention_kernel, resolve_attention
from cdc.bundle import ModelBundle, make_world_scheduler, make_world_unet
from cdc.codec import SpaceToDepthCodec, encode_images
from cdc.errors import NaNLossError
from cdc.stages.sections.pretrain import PretrainParams
from cdc.system import resolve_precision
from cdc.text import MiniLMEncoder, TextEncoder
from cdc.world.captions import sample_captions
from cdc.world.data import World


@dataclass
class CaptionPool:
    """Training pairs: caption j describes image image_index[j]."""

    prompts: list[str]
    image_index: np.ndarray  # (P,) int64 into world.images


def caption_pool(world: World, per_image: int, seed: int) -> CaptionPool:
    """per_image captions for every render (names, aliases, keywords, umbrella words x templates x style)."""
    prompts: list[str] = []
    index: list[int] = []
    for i, (c, s) in enumerate(zip(world.concept.tolist(), world.style.tolist())):
        caps = sample_captions(world.concepts[c]["phrases"], world.styles[s], world.templates, per_image, seed + i)
        prompts += caps
        index += [i] * len(caps)
    return CaptionPool(prompts, np.asarray(index, dtype=np.int64))


@torch.no_grad()
def encode_prompts(text: TextEncoder, prompts: list[str], batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Context for many prompts, stored as float16 to halve memory: (P, L, D)."""
    chunks = [
        text.encode(prompts[i : i + batch_size]).half()
        for i in tqdm(range(0, len(prompts), batch_size), desc="encode captions", disable=not progress)
    ]
    return torch.cat(chunks)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def augment_context(ctx: torch.Tensor, token_dropout: float, pooled_noise: float,
                    gen: torch.Generator) -> torch.Tensor:
    """Training-time augmentation of MiniLM contexts (B, L+1, D) whose last token is the sentence token."""
    if token_dropout == 0 and pooled_noise == 0:
        return ctx
    ctx = ctx.clone()
    b, _, d = ctx.shape
    # Draw both regardless of the settings, so that turning one on does not reshuffle the other.
    keep_only_pooled = torch.rand(b, generator=gen) < token_dropout  # (B,)
    direction = torch.randn(b, d, generator=gen) / d**0.5  # (B, D), norm ~1
    ctx[keep_only_pooled, :-1] = 0.0
    if pooled_noise > 0:
        pooled = ctx[:, -1]  # (B, D), norm = pooled_scale
        scale = pooled.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        moved = F.normalize(pooled / scale + pooled_noise * direction, dim=-1)
        ctx[:, -1] = moved * scale
    return ctx


def world_unet_from_params(cfg: PretrainParams, image_size: int, context_dim: int,
                           codec: SpaceToDepthCodec) -> UNet2DConditionModel:
    """A randomly initialised world UNet with the `pretrain` section's architecture, for image_size renders."""
    return make_world_unet(image_size // codec.downsample, codec.channels, cfg.block_channels, cfg.cross_attention,
                           cfg.layers_per_block, cfg.attention_head_dim, context_dim)


def train_world_model(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    contexts: torch.Tensor,
    pool_index: np.ndarray,
    null_context: torch.Tensor,
    cfg: PretrainParams,
    *,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
) -> tuple[UNet2DConditionModel, list[dict]]:
    """Denoising training with caption dropout and an EMA copy; returns the EMA UNet and the loss history.

    latents (N, C, h, w) are the renders in UNet space; contexts (P, L, D) the encoded captions and
    pool_index (P,) the render each caption describes; null_context (1, L, D) is the empty prompt.
    The last context token is the scaled sentence embedding (MiniLMEncoder). token_dropout is the
    probability that a caption keeps only that token (the token states are zeroed, as padding is), so the
    model learns to draw from the sentence embedding alone; pooled_noise is the norm of a random
    perturbation of the unit sentence embedding, so nearby sentences (paraphrases) draw the same thing.
    precision "bf16" runs the UNet's forward under bf16 autocast (float32 weights, optimiser and loss:
    mixed precision), "auto" where the device has native bf16 (`cdc.system.resolve_precision`).
    attention picks the attention kernel while training ("auto": unfused on the CPU, `cdc.attention`);
    the returned UNet has its own processors back.
    Batches are drawn on the CPU with one seeded generator and moved to the UNet's device, so the
    sequence of batches does not depend on the device.
    """
    if len(contexts) != len(pool_index) or len(contexts) == 0:
        raise ValueError(f"{len(contexts)} contexts for {len(pool_index)} caption/image pairs")
    steps, batch_size, lr, log_every = cfg.steps, cfg.batch_size, cfg.lr, cfg.log_every
    seed, precision, attention = cfg.seed, cfg.precision, cfg.attention
    gen = torch.Generator().manual_seed(seed)
    index = torch.from_numpy(pool_index)
    device = next(unet.parameters()).device
    autocast = resolve_precision(precision, device) == "bf16"
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    ema = [p.detach().clone() for p in unet.parameters()]
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    unet.train()
    history: list[dict] = []
    running, t0 = 0.0, time.perf_counter()
    with attention_kernel(unet, resolve_attention(attention, device)):
        bar = tqdm(range(steps), desc="pretrain", disable=not progress)
        for step in bar:
            pick = torch.randint(len(contexts), (batch_size,), generator=gen)
            x0 = latents[index[pick]]  # (B, C, h, w)
            ctx = contexts[pick].float()  # (B, L, D)
            drop = torch.rand(batch_size, generator=gen) < cfg.caption_dropout
            ctx = augment_context(ctx, cfg.token_dropout, cfg.pooled_noise, gen)
            ctx[drop] = null_context.float()
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
            x0, ctx, noise, t = x0.to(device), ctx.to(device), noise.to(device), t.to(device)
            x_t = scheduler.add_noise(x0, noise, t)
            target = scheduler.get_velocity(x0, noise, t) if v_prediction else noise
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                pred = unet(x_t, t, ctx).sample  # (B, C, h, w), bf16 under autocast
            loss = F.mse_loss(pred.float(), target)
            if not torch.isfinite(loss):
                raise NaNLossError(f"pretrain: loss is {loss.item()} at step {step}; nothing was saved")
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, cfg.warmup_steps, lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            # EMA with a warm start: early averages follow the weights closely instead of the random init.
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in unet.parameters()], 1 - decay)
            running += loss.item()
            if (step + 1) % log_every == 0 or step + 1 == steps:
                n = (step % log_every) + 1
                row = {"step": step + 1, "loss": running / n, "lr": opt.param_groups[0]["lr"],
                       "seconds": time.perf_counter() - t0}
                history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                if on_log is not None:
                    on_log(row)
                running = 0.0
    with torch.no_grad():
        for p, e in zip(unet.parameters(), ema):
            p.copy_(e)
    return unet.eval(), history


def pretrain_world(
    world: World, cfg: PretrainParams, *, device: str = "cpu", progress: bool = True
) -> tuple[ModelBundle, list[dict]]:
    """Everything the `pretrain` stage does between loading the world and saving the model (returned on CPU)."""
    torch.manual_seed(cfg.seed)  # UNet initialisation
    text = MiniLMEncoder(max_length=cfg.max_length, pooled_scale=cfg.pooled_scale).to(device)
    codec = SpaceToDepthCodec(factor=2)
    unet = world_unet_from_params(cfg, world.images.shape[1], text.dim, codec).to(device)
    scheduler = make_world_scheduler(cfg.prediction_type, cfg.beta_schedule, cfg.num_train_timesteps)
    pool = caption_pool(world, cfg.captions_per_image, cfg.seed)
    # Contexts stay on the CPU (P, L, D) in float16; each batch moves to the device.
    contexts = encode_prompts(text, pool.prompts, progress=progress).cpu()
    unet, history = train_world_model(
        unet, scheduler, encode_images(codec, world.images), contexts, pool.image_index, text.encode([""]).cpu(),
        cfg, progress=progress,
    )
    bundle = ModelBundle(text=text.to("cpu"), unet=unet.to("cpu"), scheduler=scheduler, codec=codec, preset="world")
    return bundle, history
