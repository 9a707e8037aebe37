"""ESD (erased stable diffusion), ESD-x by default: negative-guidance self-distillation with LoRA.

Loss, per sample: || UNet_LoRA(x_t, t, c) - [ e_u - eta (e_c - e_u) ] ||^2 with e_u, e_c the frozen
base model's outputs for the empty prompt and the target prompt c (eta = negative_guidance).

Where x_t comes from (documented deviation): the original ESD runs the frozen model's DDIM
partway (cfg 3, t_enc ~ U{0..49}) for every step. Here, as in the cheaper diffusers rewrite,
x_t is a base-model sample *of the target concept* (`target_latents`, drawn once) noised to a
random t. Both put x_t on the base model's trajectory for the concept; ours skips the per-step
sampling. The guidance combination has coefficients summing to 1, so applying it to raw
outputs is the same in eps- and v-space (up to the per-t loss weight).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cdc.bundle import ModelBundle
from cdc.config import bounded
from cdc.lora import base_model
from cdc.losses import mse, noisy_latents, unet_pred
from cdc.methods.config import LoraRunConfig
from cdc.methods.parallel import SINGLE, Shard
from cdc.methods.surgery import clip_grads
from cdc.methods.train import (
    ErasureData,
    StepHook,
    apply_step,
    check_finite,
    check_prompts,
    encode,
    grads_of,
    progress_bar,
    start_lora_run,
)


@dataclass(frozen=True)
class EsdConfig(LoraRunConfig):
    """ESD: negative-guidance self-distillation."""

    negative_guidance: float = bounded(0)  # eta in e_u - eta (e_c - e_u)


HISTORY_KEYS = ("step", "loss", "seconds")


def train_esd(
    bundle: ModelBundle,
    target_prompts: Sequence[str],
    target_latents: Tensor,
    cfg: EsdConfig,
    target_index: Sequence[int] | None = None,
    progress: bool = True,
    shard: Shard = SINGLE,
    on_step: StepHook | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Erase the concept of `target_prompts` with ESD; returns (UNet with LoRA, history rows).

    Args:
        target_latents: (N, C, h, w) base-model samples of the target prompts, in UNet space.
        target_index: prompt id of each latent (default: latent i <- prompt i % P).
        shard: this process's rows of each batch under data parallelism (`cdc.methods.parallel`).
        on_step: called after each step with (step, the trained tensors), e.g. to snapshot them.
    """
    targets = check_prompts(target_prompts, "target_prompts")
    shard.check_batch(cfg.batch_size)
    unet, sched = bundle.unet, bundle.scheduler
    data, params, layers, opt, gen = start_lora_run(
        bundle, cfg, target_latents, target_index, targets, latents_name="target_latents"
    )
    uncond = encode(bundle.text, [""], unet.device, unet.dtype)  # (1, L, D)
    history: list[dict] = []
    start = time.perf_counter()
    for step in progress_bar(cfg.steps, progress, "ESD"):
        x0, ctx_c = data.batch(cfg.batch_size, gen)
        x_t, _, t = noisy_latents(sched, x0, gen)
        x_t, t, ctx_c = shard.rows(x_t, t, ctx_c)  # (B / processes, ...): this process's rows of the draw
        b = x_t.shape[0]
        with torch.no_grad(), base_model(unet, layers):  # one batched frozen call: (uncond, cond)
            out = unet_pred(
                unet, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond.expand(b, -1, -1), ctx_c])
            )
            e_u, e_c = out.chunk(2)
            target = e_u - cfg.negative_guidance * (e_c - e_u)
        loss = mse(unet_pred(unet, x_t, t, ctx_c), target)
        (batch_loss,) = shard.average([loss.detach()])  # the whole batch's loss, the same on every process
        check_finite("ESD", step, loss=float(batch_loss))
        grads, _ = clip_grads(shard.average(grads_of(loss, params)), cfg.max_grad_norm)
        apply_step(opt, params, grads)
        if on_step is not None:
            on_step(step, params)
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append({"step": step, "loss": float(batch_loss), "seconds": time.perf_counter() - start})
    return unet, history


Config = EsdConfig  # params.yaml erase.esd
NEEDS = ('target',)  # the samples `erase` learns from (`ErasureData`)


def erase(bundle: ModelBundle, data: ErasureData, cfg: EsdConfig, *, progress: bool = True, shard: Shard = SINGLE,
          on_step: StepHook | None = None) -> tuple[ModelBundle, list[dict]]:
    """The erase stage's entry point: `train_esd` on the target side's samples; returns (bundle, history)."""
    data.need("ESD", *NEEDS)
    _, history = train_esd(bundle, data.target_prompts, data.target_latents, cfg, target_index=data.target_index,
                           progress=progress, shard=shard, on_step=on_step)
    return bundle, history
