"""The relearn stage: fine-tune an erased model on images of its concept with the plain denoising loss, and
record after how many steps the concept comes back.

An erasure that only hides the concept (a thin layer over weights that still know it) comes back in a few
steps; one that removed it takes about as long as learning it from scratch. The fine-tune is the same for every
method: a fresh LoRA on the UNet, with the erasure merged into the UNet first and the erased model's own text
encoder (AdvUnlearn's erasure lives there), so each method faces the same adversary.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor, nn

from cdc import evaluate as ev
from cdc.anchors import Pairs
from cdc.bundle import ModelBundle
from cdc.codec import encode_images
from cdc.config import EvaluateParams, SampleParams, check_steps
from cdc.judge import JudgeNet
from cdc.lora import remove_lora, tuner_layers
from cdc.losses import mse, noisy_latents, target_for, unet_pred
from cdc.methods.config import LoraRunConfig
from cdc.methods.surgery import clip_grads
from cdc.methods.train import apply_step, check_finite, check_prompts, grads_of, progress_bar, start_lora_run
from cdc.stages.erase import MethodConfig, run_method
from cdc.targets import returned_at
from cdc.world.data import World

Rates = Callable[[ModelBundle], dict]


def merged_unet(unet: nn.Module) -> nn.Module:
    """A copy of `unet` with its LoRA (if any) merged into the weights and unwrapped: a plain UNet that draws
    exactly what `unet` draws; `unet` is untouched."""
    out = copy.deepcopy(unet)
    for layer in tuner_layers(out):
        layer.merge()
    return remove_lora(out)  # unwrapping keeps each base layer, which now holds W + scale * B A


def concept_rates(judge: JudgeNet, world: World, family: str, in_set: list[str], cfg: EvaluateParams,
                  sampler: SampleParams) -> Rates:
    """model -> how often the judge sees the family on its in-set and out-of-set prompts, drawn with the
    erase table's images and seeds (`cdc.evaluate.erasure_rates`, the first two columns of its rows)."""

    def rates(model: ModelBundle) -> dict:
        return ev.erasure_rates(model, judge, world, family, in_set, cfg, sampler, progress=False)[0]

    return rates


def relearn(erased: ModelBundle, concept_latents: Tensor, concept_index: Sequence[int], prompts: Sequence[str],
            cfg: LoraRunConfig, checkpoints: Sequence[int], rates: Rates, *, progress: bool = True) -> list[dict]:
    """Fine-tune a copy of the erased model on images of its concept; score it at each checkpoint step.

    concept_latents: (N, C, h, w) images of the concept in UNet space, latent i drawn for prompts[index[i]].
    The loss is the pre-training one, || UNet(x_t, t, c) - target(x0, noise, t) ||^2 (eps, v or x0 as the
    scheduler predicts), on a fresh LoRA of cfg's group and rank; cfg.steps is ignored (the last checkpoint is
    the length). Returns one row per checkpoint: {"step", "seconds" (fine-tuning so far), "loss" (mean since the
    previous checkpoint; None at step 0), **rates(model)}. `erased` is left as it was.
    """
    steps = check_steps("checkpoints", list(checkpoints))
    prompts = check_prompts(prompts, "prompts")
    model = dataclasses.replace(erased, unet=merged_unet(erased.unet))
    unet, sched = model.unet, model.scheduler
    data, params, _, opt, gen = start_lora_run(model, cfg, concept_latents, concept_index, prompts,
                                               latents_name="concept_latents")
    rows, losses, seconds = [], [], 0.0
    if steps[0] == 0:
        rows.append({"step": 0, "seconds": 0.0, "loss": None} | rates(model))
    bar = progress_bar(steps[-1], progress, "relearn")
    for step in bar:
        start = time.perf_counter()
        x0, ctx = data.batch(cfg.batch_size, gen)  # (B, C, h, w), (B, L, D)
        x_t, noise, t = noisy_latents(sched, x0, gen)
        loss = mse(unet_pred(unet, x_t, t, ctx), target_for(sched, x0, noise, t))
        value = float(loss.detach())
        check_finite("relearn", step, loss=value)
        grads, _ = clip_grads(grads_of(loss, params), cfg.max_grad_norm)
        apply_step(opt, params, grads)
        seconds += time.perf_counter() - start
        losses.append(value)
        if step in steps:
            rows.append({"step": step, "seconds": round(seconds, 1), "loss": float(np.mean(losses))} | rates(model))
            losses = []
    return rows


def erase_and_relearn(
    bundle: ModelBundle, method: str, cfg: MethodConfig, pairs: Pairs, samples: dict[str, np.ndarray],
    relearn_cfg: LoraRunConfig, checkpoints: Sequence[int], rates: Rates, returned: float, *,
    retain: tuple[list[str], np.ndarray] | None = None, progress: bool = True,
) -> dict:
    """Erase with `method` (as the erase stage does), then relearn the concept from the base model's own samples
    of the training prompts; `bundle` is left as it was.

    Returns {"erase_seconds", "curve": `relearn`'s rows, "returned_at": the first step whose in-set rate reaches
    `returned`, or None}.
    """
    start = time.perf_counter()
    try:
        erased, _ = run_method(bundle, method, pairs, samples, cfg, retain=retain, progress=progress)
        seconds = time.perf_counter() - start
        latents = encode_images(bundle.codec, samples["target_images"], bundle.device, bundle.dtype)
        curve = relearn(erased, latents, samples["target_index"].tolist(), pairs.target_prompts, relearn_cfg,
                        checkpoints, rates, progress=progress)
    finally:
        remove_lora(bundle.unet)  # a LoRA method trained inside bundle.unet; AdvUnlearn's encoder is a copy
    return {"erase_seconds": round(seconds, 1), "curve": curve, "returned_at": returned_at(curve, returned)}
