"""Concept Ablation (CA), model-based variant, with LoRA.

Loss: || UNet_LoRA(x_t, t, c_target) - sg[UNet_base(x_t, t, c_anchor)] ||^2 on noised anchor samples
(map the target prompt's prediction onto the anchor's), plus prior_weight x the DreamBooth prior
loss on fresh (anchor sample, anchor prompt) pairs, as Concept Ablation's training script does.
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
from cdc.losses import mse, noisy_latents, target_for, unet_pred
from cdc.methods.config import LoraRunConfig
from cdc.methods.parallel import SINGLE, Shard
from cdc.methods.surgery import clip_grads
from cdc.methods.train import (
    ErasureData,
    StepHook,
    apply_step,
    check_finite,
    check_pairs,
    grads_of,
    progress_bar,
    start_lora_run,
)


@dataclass(frozen=True)
class CaConfig(LoraRunConfig):
    """Concept Ablation, model-based variant, with the DreamBooth prior-preservation term."""

    prior_weight: float = bounded(0)  # 0 turns the prior-preservation term off


HISTORY_KEYS = ("step", "loss", "loss_ablate", "loss_prior", "seconds")


def train_ca(
    bundle: ModelBundle,
    target_prompts: Sequence[str],
    anchor_prompts: Sequence[str],
    anchor_latents: Tensor,
    cfg: CaConfig,
    anchor_index: Sequence[int] | None = None,
    progress: bool = True,
    shard: Shard = SINGLE,
    on_step: StepHook | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Ablate the target concept towards the anchor; returns (UNet with LoRA, history rows).

    Same data contract as `train_doco`: paired prompt lists and (N, C, h, w) anchor samples; `shard`: this
    process's rows of each batch under data parallelism (`cdc.methods.parallel`); `on_step` as in `train_esd`.
    """
    targets, anchors = check_pairs(target_prompts, anchor_prompts)
    shard.check_batch(cfg.batch_size)
    unet, sched = bundle.unet, bundle.scheduler
    data, params, layers, opt, gen = start_lora_run(bundle, cfg, anchor_latents, anchor_index, targets, anchors)
    history: list[dict] = []
    start = time.perf_counter()
    for step in progress_bar(cfg.steps, progress, "CA"):
        x0, ctx_t, ctx_a = data.batch(cfg.batch_size, gen)
        x_t, _, t = noisy_latents(sched, x0, gen)
        x_t, t, ctx_t, ctx_a = shard.rows(x_t, t, ctx_t, ctx_a)  # this process's rows of the draw
        with torch.no_grad(), base_model(unet, layers):
            anchor_out = unet_pred(unet, x_t, t, ctx_a)  # (B, C, h, w), the ablation target
        if cfg.prior_weight > 0:
            xb, _, ctx_b = data.batch(cfg.batch_size, gen)
            xb_t, noise_b, t_b = noisy_latents(sched, xb, gen)
            xb, xb_t, noise_b, t_b, ctx_b = shard.rows(xb, xb_t, noise_b, t_b, ctx_b)
            # One LoRA call over both halves: a single summed loss needs only one backward pass.
            out = unet_pred(unet, torch.cat([x_t, xb_t]), torch.cat([t, t_b]), torch.cat([ctx_t, ctx_b]))
            pred, pred_b = out.chunk(2)
            loss_prior = mse(pred_b, target_for(sched, xb, noise_b, t_b))
        else:
            pred, loss_prior = unet_pred(unet, x_t, t, ctx_t), torch.zeros(())
        loss_ablate = mse(pred, anchor_out)
        loss = loss_ablate + cfg.prior_weight * loss_prior
        # The whole batch's losses, the same on every process: (loss, loss_ablate, loss_prior).
        losses = [float(v) for v in shard.average([loss.detach(), loss_ablate.detach(), loss_prior.detach()])]
        check_finite("CA", step, loss=losses[0])
        grads, _ = clip_grads(shard.average(grads_of(loss, params)), cfg.max_grad_norm)
        apply_step(opt, params, grads)
        if on_step is not None:
            on_step(step, params)
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append(
                {
                    "step": step,
                    "loss": losses[0],
                    "loss_ablate": losses[1],
                    "loss_prior": losses[2],
                    "seconds": time.perf_counter() - start,
                }
            )
    return unet, history


Config = CaConfig  # params.yaml erase.ca
NEEDS = ('anchor',)  # the samples `erase` learns from (`ErasureData`)


def erase(bundle: ModelBundle, data: ErasureData, cfg: CaConfig, *, progress: bool = True, shard: Shard = SINGLE,
          on_step: StepHook | None = None) -> tuple[ModelBundle, list[dict]]:
    """The erase stage's entry point: `train_ca` on the anchor side's samples; returns (bundle, history)."""
    data.need("CA", *NEEDS)
    _, history = train_ca(bundle, data.target_prompts, data.anchor_prompts, data.anchor_latents, cfg,
                          anchor_index=data.anchor_index, progress=progress, shard=shard, on_step=on_step)
    return bundle, history
