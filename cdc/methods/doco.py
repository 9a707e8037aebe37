"""DoCo: concept domain correction (PatchGAN on predicted x0) + concept-preserving gradient surgery.

One step, after `warmup_steps` discriminator-only steps (B = batch_size):
  x0 (B anchor samples), shared noise and t  ->  x_t
  real = x0_hat(frozen base, x_t, anchor prompt)       no grad, LoRA disabled (no second UNet copy)
  fake = x0_hat(LoRA UNet, x_t, target prompt)          target prompt i is anchor prompt i with the concept
  L_adv   = BCE(D(fake), real label)                    non-saturating; labels as released: real 0, fake 1
  L_prior = MSE(LoRA UNet(x'_t, anchor prompt'), eps/v)  DreamBooth prior loss on B fresh anchor pairs
  g_a, g_b = clip(dL_adv/dLoRA), clip(dL_prior/dLoRA)   one 2B forward + one backward (route_grads)
  LoRA step with surgery(g_a, g_b): g_b only steers (both released rules), or g_a + w g_b ("sum")
  L_D = BCE(D(real), 0) + BCE(D(fake.detach()), 1); Adam step of D (every step, warm-up included)

Released-code quirks (yongliang-wu/DoCo@ebf6ff4) and what this implementation does:
1. D's .grad also held dL_adv/dD when D stepped: off by default (a clean GAN step);
   `d_gets_adv_grads=True` reproduces it.
2. "real" is the frozen model's x0_hat for the anchor prompt on the same x_t, not a clean anchor
   latent: kept.
3. L_prior only steers the surgery and is never applied: kept for "cosine"/"pcgrad"; "sum" is the
   weighted-sum ablation (weight 0.1 as in the released no-surgery branch).
4. Random-rescale augmentation and "zoomed in"/"far away" prefixes on target prompts only: not done
   here; the caller's prompt lists and anchor samples are used as given.
5. The patched diffusers `step_batch`: replaced by `losses.pred_x0` (same formula, no clamp, as with
   SD's clip_sample=False).
Also kept: no gradient through context position 0's K/V (`detach_first_token`), D's BatchNorm in
train mode on separate real and fake batches, warm-up as `step > warmup_steps`, per-tensor surgery
after separate global clipping of g_a and g_b (max_grad_norm 1.0).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cdc.methods.discriminator import make_discriminator
from cdc.methods.lora import base_model, detach_first_token, route_grads
from cdc.methods.losses import mse, noisy_latents, pred_eps, pred_x0, target_for, unet_pred
from cdc.methods.surgery import MODES, clip_grads, combine
from cdc.methods.train import (
    LoraRunConfig,
    apply_step,
    check_finite,
    check_pairs,
    grads_of,
    progress_bar,
    start_lora_run,
)

REAL, FAKE = 0.0, 1.0  # released label convention: anchor/real = 0, target/fake = 1
HISTORY_KEYS = (
    "step",
    "loss_d",
    "loss_adv",
    "loss_prior",
    "cos_grad",
    "surgery_fired",
    "d_real_acc",
    "d_fake_acc",
    "seconds",
)


@dataclass(frozen=True)
class DocoConfig(LoraRunConfig):
    """Knobs of one DoCo run (released README values in comments).

    Inherited: steps (warm-up included; README 2000), lr (LoRA AdamW; released full K/V: 6e-6 x batch 8),
    batch_size (B target pairs + B prior pairs per step; README 8 + 8), lora_group (released: attn2.to_k /
    to_v only), lora_rank, lora_alpha, max_grad_norm (g_a and g_b clipped separately, as released),
    weight_decay, seed, log_every.
    """

    steps: int = 300
    warmup_steps: int = 100  # discriminator-only steps (README 1000; Nov-2024 scripts 200)
    d_lr: float = 1e-4  # discriminator Adam lr, betas (0.5, 0.999) (README 1e-4 object, 5e-4 style)
    lam: float = 1.0  # surgery strength lambda (README 1; Nov-2024 scripts 0.5 for objects)
    surgery: str = "cosine"  # "cosine" (HEAD), "pcgrad" (first release) or "sum" (ablation)
    per_tensor: bool = True  # pcgrad per parameter tensor, as the first release's loop
    prior_weight: float = 0.1  # g_b weight in "sum" mode (released no-surgery branch: 0.1 x 1.0)
    d_input: str = "x0"  # "x0" (HEAD) or "eps" (first release: D saw the noise prediction)
    d_layers: int | None = None  # stride-2 stages of D; None: >= 3x3 logits (4 on 64x64, 2 on 16x16)
    d_width: int = 64
    d_norm: str = "batch"  # "batch" as released, "instance" or "none"
    detach_first_token: bool = True  # released: no gradient through K/V of context position 0
    d_gets_adv_grads: bool = False  # True reproduces released quirk 1 (D also steps on dL_adv/dD)


def _check_config(cfg: DocoConfig) -> None:
    """Reject settings that cannot run, naming the knob."""
    if cfg.surgery not in MODES:
        raise ValueError(f"unknown surgery mode {cfg.surgery!r} (known: {', '.join(MODES)})")
    if cfg.d_input not in ("x0", "eps"):
        raise ValueError(f"unknown d_input {cfg.d_input!r} (known: 'x0', 'eps')")
    if not 0 <= cfg.warmup_steps <= cfg.steps:
        raise ValueError(f"need 0 <= warmup_steps <= steps; got warmup_steps={cfg.warmup_steps}, steps={cfg.steps}")


def _bce(logits: Tensor, label: float) -> Tensor:
    """BCE-with-logits of every patch logit against a constant label."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def train_doco(
    bundle,
    target_prompts: Sequence[str],
    anchor_prompts: Sequence[str],
    anchor_latents: Tensor,
    cfg: DocoConfig = DocoConfig(),
    anchor_index: Sequence[int] | None = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, list[dict]]:
    """Erase a concept from `bundle.unet` with DoCo; returns (the UNet with its LoRA, history rows).

    Args:
        target_prompts / anchor_prompts: paired lists, target i = anchor i with the concept in it.
        anchor_latents: (N, C, h, w) base-model samples of the anchor prompts in UNet space.
        anchor_index: prompt id of each latent (default: latent i was drawn from prompt i % P).
    The LoRA is added to `bundle.unet` in place (base weights untouched; `remove_lora` undoes it).
    """
    _check_config(cfg)
    targets, anchors = check_pairs(target_prompts, anchor_prompts)
    unet, sched = bundle.unet, bundle.scheduler
    # contexts: (target, anchor)
    data, params, layers, opt, gen = start_lora_run(bundle, cfg, anchor_latents, anchor_index, targets, anchors)
    to_d = pred_x0 if cfg.d_input == "x0" else pred_eps
    channels, size = data.latents.shape[1], data.latents.shape[-1]
    disc = make_discriminator(channels, size, cfg.d_layers, cfg.d_width, cfg.d_norm, cfg.seed, unet.device)
    d_params = list(disc.parameters())
    d_opt = torch.optim.Adam(d_params, lr=cfg.d_lr, betas=(0.5, 0.999))

    history: list[dict] = []
    start = time.perf_counter()
    hooks = detach_first_token(unet) if cfg.detach_first_token else nullcontext()
    with hooks:
        for step in progress_bar(cfg.steps, progress, "DoCo"):
            x0, ctx_t, ctx_a = data.batch(cfg.batch_size, gen)  # (B, C, h, w), (B, L, D) x 2
            x_t, _, t = noisy_latents(sched, x0, gen)
            train_g = step > cfg.warmup_steps
            row: dict = dict.fromkeys(HISTORY_KEYS)
            if train_g:
                with torch.no_grad(), base_model(unet, layers):
                    real = to_d(sched, unet_pred(unet, x_t, t, ctx_a), x_t, t)
                # Target rows and prior rows (fresh anchor pairs with their own noise, as released)
                # go through ONE LoRA call; route_grads gives each half its own gradient from a
                # single backward (two B-sized backward passes would cost the same compute plus
                # a second call's overhead).
                xb, _, ctx_b = data.batch(cfg.batch_size, gen)
                xb_t, noise_b, t_b = noisy_latents(sched, xb, gen)
                with route_grads(unet, params, n_first=x_t.shape[0]) as shadows:
                    out = unet_pred(unet, torch.cat([x_t, xb_t]), torch.cat([t, t_b]), torch.cat([ctx_t, ctx_b]))
                fake_out, prior_out = out.chunk(2)
                fake = to_d(sched, fake_out, x_t, t)
                loss_prior = mse(prior_out, target_for(sched, xb, noise_b, t_b))
                loss_adv = _bce(disc(fake), REAL)
                check_finite("DoCo", step, loss_adv=float(loss_adv.detach()), loss_prior=float(loss_prior.detach()))
                extra = d_params if cfg.d_gets_adv_grads else []
                grads = grads_of(loss_adv + loss_prior, params + shadows + extra)
                n = len(params)
                g_a, g_b, d_adv = grads[:n], grads[n : 2 * n], grads[2 * n :]
                g_a, _ = clip_grads(g_a, cfg.max_grad_norm)
                g_b, _ = clip_grads(g_b, cfg.max_grad_norm)
                update, stats = combine(g_a, g_b, cfg.surgery, cfg.lam, cfg.prior_weight, cfg.per_tensor)
                apply_step(opt, params, update)
                row.update(
                    loss_adv=float(loss_adv.detach()),
                    loss_prior=float(loss_prior.detach()),
                    cos_grad=stats.cosine,
                    surgery_fired=stats.fired,
                )
            else:
                # Warm-up: the LoRA is still the identity (B = 0), so one batched base call
                # gives both predictions.
                with torch.no_grad(), base_model(unet, layers):
                    out = unet_pred(unet, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([ctx_a, ctx_t]))
                real, fake = to_d(sched, out, torch.cat([x_t, x_t]), torch.cat([t, t])).chunk(2)
                d_adv = []
            # D step on the fake from before the LoRA update, as released.
            d_opt.zero_grad(set_to_none=True)
            logit_real, logit_fake = disc(real.detach()), disc(fake.detach())
            loss_d = _bce(logit_real, REAL) + _bce(logit_fake, FAKE)
            check_finite("DoCo", step, loss_d=float(loss_d.detach()))
            loss_d.backward()
            for p, g in zip(d_params, d_adv):  # quirk 1: released D also got dL_adv/dD
                p.grad = p.grad + g
            d_opt.step()
            if step % cfg.log_every == 0 or step == cfg.steps:
                row.update(
                    step=step,
                    loss_d=float(loss_d.detach()),
                    d_real_acc=float((logit_real < 0).float().mean()),
                    d_fake_acc=float((logit_fake > 0).float().mean()),
                    seconds=time.perf_counter() - start,
                )
                history.append(row)
    return unet, history
