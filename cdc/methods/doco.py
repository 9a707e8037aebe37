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

Paper: Wu et al., "Unlearning Concepts in Diffusion Model via Concept Domain Correction and
Concept Preserving Gradient", AAAI-25: L_adv is its concept domain correction (the adversarial
objective), the surgery its concept-preserving gradient.

Code layout: `doco_run` sets a run up (LoRA, D and both optimisers, the seeded generator, hooks) and
`doco_step` is one training step returning a `StepReport`; `train_doco` is just their loop, so a
notebook that calls `doco_step` sees exactly what training does.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cdc.bundle import ModelBundle
from cdc.discriminator import make_discriminator
from cdc.lora import base_model
from cdc.losses import mse, noisy_latents, pred_eps, pred_x0, target_for, unet_pred
from cdc.methods.domain import FAKE, REAL, DocoConfig, bce, warmup_pair
from cdc.methods.hooks import detach_first_token, route_grads
from cdc.methods.parallel import SINGLE, Shard
from cdc.methods.surgery import SurgeryStats, clip_grads, combine, tensor_cosines
from cdc.methods.train import (
    ErasureData,
    PairedData,
    StepHook,
    apply_step,
    check_finite,
    check_pairs,
    grads_of,
    progress_bar,
    start_lora_run,
)

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


@dataclass
class DocoState:
    """What a DoCo run carries from step to step (built by `doco_run`; `doco_step` mutates it).

    The LoRA lives in `unet` (the bundle's UNet, in place); `layers` are its tuner layers, which
    `base_model` switches off to get the frozen model. `generator` draws every batch, noise and
    timestep, so the sequence of `doco_step` calls alone fixes the run.
    """

    cfg: DocoConfig
    unet: nn.Module
    scheduler: object
    data: PairedData  # latents (N, C, h, w); contexts (target (P, L, D), anchor (P, L, D))
    params: list[nn.Parameter]  # LoRA tensors, fixed order
    names: list[str]  # their parameter names in `unet`, same order
    layers: list[nn.Module]
    optimizer: torch.optim.Optimizer  # LoRA AdamW
    generator: torch.Generator
    disc: nn.Module  # PatchGAN: (B, C, h, w) -> (B, 1, p, p) patch logits
    d_params: list[nn.Parameter]
    d_optimizer: torch.optim.Optimizer  # D's Adam, betas (0.5, 0.999)
    to_d: Callable[..., Tensor]  # what D sees: pred_x0 (x̂0) or pred_eps, (B, C, h, w)
    shard: Shard = SINGLE  # this process's rows of each batch under data parallelism


@dataclass
class StepReport:
    """What one `doco_step` did. Logits are detached CPU tensors; gradients are detached tensors on
    the UNet's device (not copied: the training loop drops them unread).

    During the warm-up (`trained_lora` False) only D steps: the LoRA fields are None.
    """

    step: int
    trained_lora: bool
    loss_d: float  # BCE(D(real), 0) + BCE(D(fake), 1)
    logits_real: Tensor  # (B, 1, p, p) D's patch logits on real x̂0 (frozen model, anchor prompt)
    logits_fake: Tensor  # (B, 1, p, p) on fake x̂0 (LoRA model before this step's update, target prompt)
    loss_adv: float | None = None  # BCE(D(fake), 0): the LoRA is trained to make D call fake real
    loss_prior: float | None = None  # denoising loss on fresh anchor pairs
    surgery: SurgeryStats | None = None  # global cos(g_a, g_b) and the share of tensors adjusted
    g_a: list[Tensor] | None = None  # unlearning gradient dL_adv/dLoRA after clipping, one per LoRA tensor
    g_b: list[Tensor] | None = None  # preservation gradient dL_prior/dLoRA after clipping
    update: list[Tensor] | None = None  # what the optimiser got: surgery(g_a, g_b)
    norms_before_clip: tuple[float, float] | None = None  # global ||g_a||, ||g_b|| before clipping

    @property
    def d_real_acc(self) -> float:
        """Share of real patches D calls real (logit < 0, as real is label 0)."""
        return float((self.logits_real < 0).float().mean())

    @property
    def d_fake_acc(self) -> float:
        """Share of fake patches D calls fake (logit > 0)."""
        return float((self.logits_fake > 0).float().mean())

    def history_row(self, seconds: float) -> dict:
        """The `train_doco` history row of this step (keys `HISTORY_KEYS`)."""
        row: dict = dict.fromkeys(HISTORY_KEYS)
        if self.trained_lora:
            row.update(loss_adv=self.loss_adv, loss_prior=self.loss_prior, cos_grad=self.surgery.cosine,
                       surgery_fired=self.surgery.fired)
        row.update(step=self.step, loss_d=self.loss_d, d_real_acc=self.d_real_acc, d_fake_acc=self.d_fake_acc,
                   seconds=seconds)
        return row

    def per_tensor(self, names: Sequence[str]) -> dict[str, list]:
        """One entry per LoRA tensor (T of them, `names` as in `DocoState.names`): cos(g_a, g_b),
        cos(update, g_b), the norms of g_a, g_b and the update, and whether the surgery changed the
        tensor (update != g_a). Columns of equal length, ready for a DataFrame."""
        if not self.trained_lora:
            raise ValueError(f"step {self.step} is a warm-up step: D only, no LoRA gradients")
        if len(names) != len(self.g_a):
            raise ValueError(f"{len(names)} names for {len(self.g_a)} LoRA tensors")

        def norms(grads: list[Tensor]) -> list[float]:
            return [float(g.float().norm()) for g in grads]

        return {
            "tensor": list(names),
            "cos_ab": tensor_cosines(self.g_a, self.g_b).tolist(),
            "cos_update_b": tensor_cosines(self.update, self.g_b).tolist(),
            "norm_a": norms(self.g_a),
            "norm_b": norms(self.g_b),
            "norm_update": norms(self.update),
            "changed": [not torch.equal(u, a) for u, a in zip(self.update, self.g_a)],
        }


@contextmanager
def doco_run(
    bundle: ModelBundle,
    target_prompts: Sequence[str],
    anchor_prompts: Sequence[str],
    anchor_latents: Tensor,
    cfg: DocoConfig,
    anchor_index: Sequence[int] | None = None,
    shard: Shard = SINGLE,
) -> Iterator[DocoState]:
    """Set up a DoCo run on `bundle.unet` (a fresh seeded LoRA added in place) and yield its state;
    `doco_step(state, step)` for step = 1..cfg.steps inside the block is the whole training.

    The cross-attention hooks (`detach_first_token`) are on for the block only. Arguments as
    `train_doco`.
    """
    targets, anchors = check_pairs(target_prompts, anchor_prompts)
    shard.check_batch(cfg.batch_size)
    unet = bundle.unet
    # contexts: (target, anchor)
    run = start_lora_run(bundle, cfg, anchor_latents, anchor_index, targets, anchors)
    channels, size = run.data.latents.shape[1], run.data.latents.shape[-1]
    disc = make_discriminator(channels, size, cfg.d_layers, cfg.d_width, cfg.d_norm, cfg.seed, unet.device)
    d_params = list(disc.parameters())
    name_of = {id(p): n for n, p in unet.named_parameters()}
    state = DocoState(
        cfg=cfg,
        unet=unet,
        scheduler=bundle.scheduler,
        data=run.data,
        params=run.params,
        names=[name_of[id(p)] for p in run.params],
        layers=run.layers,
        optimizer=run.optimizer,
        generator=run.generator,
        disc=disc,
        d_params=d_params,
        d_optimizer=torch.optim.Adam(d_params, lr=cfg.d_lr, betas=(0.5, 0.999)),
        to_d=pred_x0 if cfg.d_input == "x0" else pred_eps,
        shard=shard,
    )
    with detach_first_token(unet) if cfg.detach_first_token else nullcontext():
        yield state


def doco_step(state: DocoState, step: int) -> StepReport:
    """One DoCo step (1-based `step`): a LoRA update with gradient surgery after the warm-up, then
    one discriminator update, on one batch of B = cfg.batch_size latents."""
    cfg, sched, gen = state.cfg, state.scheduler, state.generator
    x0, ctx_t, ctx_a = state.data.batch(cfg.batch_size, gen)  # (B, C, h, w), (B, L, D) x 2
    x_t, _, t = noisy_latents(sched, x0, gen)  # (B, C, h, w), _, (B,)
    x_t, t, ctx_t, ctx_a = state.shard.rows(x_t, t, ctx_t, ctx_a)  # this process's rows of the draw
    trained = step > cfg.warmup_steps
    if trained:
        real, fake, d_adv, report = _lora_update(state, step, x_t, t, ctx_t, ctx_a)
    else:
        real, fake = warmup_pair(state.unet, state.layers, state.scheduler, state.to_d, x_t, t, ctx_t, ctx_a)
        d_adv, report = [], {}
    loss_d, logit_real, logit_fake = _discriminator_update(state, step, real, fake, d_adv)
    return StepReport(
        step=step,
        trained_lora=trained,
        loss_d=loss_d,
        logits_real=logit_real.detach().cpu(),
        logits_fake=logit_fake.detach().cpu(),
        **report,
    )


def _lora_update(
    state: DocoState, step: int, x_t: Tensor, t: Tensor, ctx_t: Tensor, ctx_a: Tensor
) -> tuple[Tensor, Tensor, list[Tensor], dict]:
    """The generator half of a step: L_adv and L_prior, their gradients g_a and g_b, the surgery,
    one LoRA step. Returns (real, fake) x̂0 (B, C, h, w) for D, D's adversarial grads (quirk 1; else
    []), and the StepReport fields.

    Adversarial loss (the paper's concept domain correction): L_adv = BCE(D(fake), real label),
    non-saturating. Surgery (its concept-preserving gradient, `surgery.combine`): where
    cos(g_a, g_b) < 0, the conflicting part of g_a is removed (cosine rule: g_a - lam cos g_b/||g_b||;
    pcgrad: g_a - lam <g_a,g_b>/||g_b||^2 g_b).
    """
    cfg, unet, sched, params = state.cfg, state.unet, state.scheduler, state.params
    with torch.no_grad(), base_model(unet, state.layers):
        real = state.to_d(sched, unet_pred(unet, x_t, t, ctx_a), x_t, t)  # (B, C, h, w)
    # Target rows and prior rows (fresh anchor pairs with their own noise, as released) go through
    # ONE LoRA call; route_grads gives each half its own gradient from a single backward (two
    # B-sized backward passes would cost the same compute plus a second call's overhead).
    xb, _, ctx_b = state.data.batch(cfg.batch_size, state.generator)
    xb_t, noise_b, t_b = noisy_latents(sched, xb, state.generator)
    xb, xb_t, noise_b, t_b, ctx_b = state.shard.rows(xb, xb_t, noise_b, t_b, ctx_b)
    with route_grads(unet, params, n_first=x_t.shape[0]) as shadows:
        out = unet_pred(unet, torch.cat([x_t, xb_t]), torch.cat([t, t_b]), torch.cat([ctx_t, ctx_b]))  # (2B, ...)
    fake_out, prior_out = out.chunk(2)
    fake = state.to_d(sched, fake_out, x_t, t)  # (B, C, h, w)
    loss_prior = mse(prior_out, target_for(sched, xb, noise_b, t_b))
    loss_adv = bce(state.disc(fake), REAL)
    # The whole batch's losses, the same on every process.
    adv_value, prior_value = (float(v) for v in state.shard.average([loss_adv.detach(), loss_prior.detach()]))
    check_finite("DoCo", step, loss_adv=adv_value, loss_prior=prior_value)
    extra = state.d_params if cfg.d_gets_adv_grads else []
    grads = state.shard.average(grads_of(loss_adv + loss_prior, params + shadows + extra))
    n = len(params)
    g_a, g_b, d_adv = grads[:n], grads[n : 2 * n], grads[2 * n :]
    g_a, norm_a = clip_grads(g_a, cfg.max_grad_norm)
    g_b, norm_b = clip_grads(g_b, cfg.max_grad_norm)
    update, stats = combine(g_a, g_b, cfg.surgery, cfg.lam, cfg.prior_weight, cfg.per_tensor)
    apply_step(state.optimizer, params, update)
    report = dict(
        loss_adv=adv_value,
        loss_prior=prior_value,
        surgery=stats,
        g_a=[g.detach() for g in g_a],
        g_b=[g.detach() for g in g_b],
        update=[u.detach() for u in update],
        norms_before_clip=(norm_a, norm_b),
    )
    return real, fake, d_adv, report


def _discriminator_update(
    state: DocoState, step: int, real: Tensor, fake: Tensor, d_adv: list[Tensor]
) -> tuple[float, Tensor, Tensor]:
    """One Adam step of D on L_D = BCE(D(real), 0) + BCE(D(fake.detach()), 1), on the fake from
    before the LoRA update, as released. Returns (L_D, logits real, logits fake), logits (B, 1, p, p).

    Under data parallelism D's gradients are averaged like the LoRA's, but batch norm (`d_norm: batch`)
    normalises over each process's own rows (no SyncBatchNorm), so only `instance` or `none` train the D
    one process would."""
    state.d_optimizer.zero_grad(set_to_none=True)
    logit_real, logit_fake = state.disc(real.detach()), state.disc(fake.detach())
    loss_d = bce(logit_real, REAL) + bce(logit_fake, FAKE)
    (loss_value,) = (float(v) for v in state.shard.average([loss_d.detach()]))
    check_finite("DoCo", step, loss_d=loss_value)
    loss_d.backward()
    grads = state.shard.average([p.grad for p in state.d_params])
    for p, g, adv in itertools.zip_longest(state.d_params, grads, d_adv):  # quirk 1: D also got dL_adv/dD
        p.grad = g if adv is None else g + adv
    state.d_optimizer.step()
    return loss_value, logit_real, logit_fake


def train_doco(
    bundle: ModelBundle,
    target_prompts: Sequence[str],
    anchor_prompts: Sequence[str],
    anchor_latents: Tensor,
    cfg: DocoConfig,
    anchor_index: Sequence[int] | None = None,
    progress: bool = True,
    shard: Shard = SINGLE,
    on_step: StepHook | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Erase a concept from `bundle.unet` with DoCo; returns (the UNet with its LoRA, history rows).

    Args:
        target_prompts / anchor_prompts: paired lists, target i = anchor i with the concept in it.
        anchor_latents: (N, C, h, w) base-model samples of the anchor prompts in UNet space.
        anchor_index: prompt id of each latent (default: latent i was drawn from prompt i % P).
        shard: this process's rows of each batch under data parallelism (`cdc.methods.parallel`).
        on_step: called after each step with (step, the trained tensors), e.g. to snapshot them.
    The LoRA is added to `bundle.unet` in place (base weights untouched; `remove_lora` undoes it).
    """
    history: list[dict] = []
    with doco_run(bundle, target_prompts, anchor_prompts, anchor_latents, cfg, anchor_index, shard) as state:
        start = time.perf_counter()
        for step in progress_bar(cfg.steps, progress, "DoCo"):
            report = doco_step(state, step)
            if on_step is not None:
                on_step(step, state.params)
            if step % cfg.log_every == 0 or step == cfg.steps:
                history.append(report.history_row(time.perf_counter() - start))
    return bundle.unet, history


Config = DocoConfig  # params.yaml erase.doco
NEEDS = ('anchor',)  # the samples `erase` learns from (`ErasureData`)


def erase(bundle: ModelBundle, data: ErasureData, cfg: DocoConfig, *, progress: bool = True, shard: Shard = SINGLE,
          on_step: StepHook | None = None) -> tuple[ModelBundle, list[dict]]:
    """The erase stage's entry point: `train_doco` on the anchor side's samples; returns (bundle, history)."""
    data.need("DoCo", *NEEDS)
    _, history = train_doco(bundle, data.target_prompts, data.anchor_prompts, data.anchor_latents, cfg,
                            anchor_index=data.anchor_index, progress=progress, shard=shard, on_step=on_step)
    return bundle, history
