"""AdvUnlearn: robust erasure by adversarial training, ESD's loss on soft-prompt-attacked prompts
[Zhang et al., NeurIPS'24; OPTML-Group/AdvUnlearn@9d23124 train-scripts/AdvUnlearn.py,
utils/attack_util.py:soft_prompt_attack, utils/get_loss.py:get_train_loss_retain].

Bi-level loop, per step:
  lower (after warm-up): k prefix word embeddings delta that make the CURRENT model reproduce the
    ORIGINAL model's concept prediction, min_delta MSE(e_theta(x', t', [SOT, delta, c]), e_0(x', t', c)),
    `attack_steps` Adam steps (pgd: the plain gradient, no projection; fast_at: its sign), fresh
    noise and t each step, start from random vocabulary embeddings (released `--attack_init random`);
  upper: L = || e_theta(x, t, [SOT, delta, c]) - [e_u - eta (e_c - e_u)] ||^2
             + gamma || e_theta(x_r, t_r, c_r) - e_0(x_r, t_r, c_r) ||^2      (released `--retain_train reg`)
    with e_u, e_c the original model on "" and c; during warm-up the clean prompt c replaces the attack.

module="text_encoder" (released): the trained module is a copy of the text encoder (all layers and the
final norm, embeddings frozen; `cdc.encoder_io`); the UNet is never updated and the bundle's
own encoder is the frozen original. module="unet" (the paper's ablation): a UNet LoRA is trained with
the same losses, the attack runs through the frozen text encoder and `base_model()` is the original.

Documented deviations: x_t is a base-model sample of the target noised to a random t, as in
`cdc.methods.esd` (released: the original model's partial DDIM each step); a step draws `batch_size`
latents with their prompts and attacks each with its own delta (released: one prompt, one sample);
retain latents get their own t and are drawn with replacement (released: same t, next unseen
prompts); the trained encoder runs in eval mode (no dropout), so one CPU generator fixes the run; the
optimiser is AdamW (weight_decay 0 = the released Adam).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from cdc.bundle import ModelBundle
from cdc.config import bounded
from cdc.embeddings import (
    candidate_ids,
    context_from_embeddings,
    insert_prefix,
    prefix_embeddings,
    token_table,
)
from cdc.encoder_io import frozen, trainable_copy
from cdc.lora import add_lora, base_model, lora_parameters, tuner_layers
from cdc.losses import mse, noisy_latents, unet_pred
from cdc.methods.config import LoraRunConfig
from cdc.methods.parallel import SINGLE, Shard
from cdc.methods.surgery import clip_grads
from cdc.methods.train import (
    ErasureData,
    StepHook,
    apply_step,
    check_finite,
    check_latents,
    check_prompts,
    encode,
    grads_of,
    make_generator,
    make_optimizer,
    progress_bar,
    prompt_index,
)
from cdc.text import TextEncoder, Tokens

AttackMethod = Literal["pgd", "fast_at"]  # AdvUnlearn's inner attack: the gradient, or its sign (fast AT)
Module = Literal["text_encoder", "unet"]  # what AdvUnlearn trains


@dataclass(frozen=True)
class AdvUnlearnConfig(LoraRunConfig):
    """AdvUnlearn's knobs (released values in comments); lora_* only matter for module="unet".

    Inherited: steps (1000), lr (Adam 1e-5 on the text encoder), batch_size (1), max_grad_norm (released: no clipping),
    weight_decay (0), seed, log_every, lora_group / lora_rank / lora_alpha.
    """

    warmup_steps: int = bounded(0)  # first steps without attack (200)
    negative_guidance: float = bounded(0)  # eta in e_u - eta (e_c - e_u) (1)
    retain_weight: float = bounded(0)  # gamma of the retain regulariser (README 0.3; 0 turns it off)
    retain_batch: int = bounded(1)  # retain latents per step (5 prompts)
    attack_steps: int = bounded(0)  # inner steps per attack (30); 0: never attack (ESD on the module)
    attack_k: int = bounded(1)  # adversarial prefix tokens (1)
    attack_lr: float = bounded(0, lo_open=True)  # Adam lr on delta (1e-3)
    attack_method: AttackMethod  # pgd: Adam on the gradient; fast_at: Adam on its sign
    module: Module  # text_encoder (released) or a UNet LoRA (ablation)
    text_layers: int | None = bounded(1)  # None: all layers + final norm (text_encoder_full); n: first n

    def __post_init__(self) -> None:
        """The warm-up must leave at least one adversarial step."""
        super().__post_init__()
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps}): "
                             "no step would be adversarial")


# attack_loss_start / _end: the inner objective at the attack's first and last step (None when no attack ran).
HISTORY_KEYS = ("step", "loss", "loss_unlearn", "loss_retain", "attack_loss_start", "attack_loss_end", "seconds")


@dataclass
class Models:
    """The model under training and the original it is measured against (one UNet, no second copy)."""

    unet: nn.Module
    text: TextEncoder  # encoder of the current model: the trained copy, or the frozen one in unet mode
    layers: list[nn.Module]  # LoRA tuner layers that base_model() turns off (unet mode); [] in text mode

    def current(self, x_t: Tensor, t: Tensor, context: Tensor) -> Tensor:
        """The current model's output (B, C, h, w), with gradients."""
        return unet_pred(self.unet, x_t, t, context.to(self.unet.dtype))

    def original(self, x_t: Tensor, t: Tensor, context0: Tensor) -> Tensor:
        """The original model's output (B, C, h, w) on contexts of the original encoder, no gradient."""
        with torch.no_grad(), base_model(self.unet, self.layers) if self.layers else nullcontext():
            return unet_pred(self.unet, x_t, t, context0)


def adversarial_context(text: TextEncoder, adv_tokens: Tokens, delta: Tensor) -> Tensor:
    """Context (B, L', D) of [SOT, delta_1..k, prompt, EOT, pad..]: delta (B, k, D_tok) fills the prefix slots
    of `adv_tokens` (made by `insert_prefix`), in word-embedding space before position embeddings
    (released `attack_type prefix_k`, `attack_embd_type word_embd`)."""
    return context_from_embeddings(text, adv_tokens, prefix_embeddings(token_table(text), adv_tokens, delta))


def attack_loss(models: Models, x_t: Tensor, t: Tensor, adv_tokens: Tokens, delta: Tensor,
                context0: Tensor) -> Tensor:
    """The attacker's objective: MSE(current(x_t, t, [SOT, delta, c]), original(x_t, t, c))."""
    pred = models.current(x_t, t, adversarial_context(models.text, adv_tokens, delta))
    return mse(pred, models.original(x_t, t, context0))


def random_prefix(text: TextEncoder, candidates: Tensor, b: int, k: int, generator: torch.Generator) -> Tensor:
    """delta (B, k, D_tok) from k random vocabulary tokens' embeddings per row (released attack_init random)."""
    pick = torch.randint(0, candidates.shape[0], (b, k), generator=generator, device=generator.device).cpu()
    table = token_table(text)
    return table[candidates[pick].to(table.device)].clone().float()


def soft_prompt_attack(models: Models, scheduler, x0: Tensor, adv_tokens: Tokens, context0: Tensor,
                       init: Tensor, steps: int, lr: float, method: AttackMethod,
                       generator: torch.Generator,
                       on_step: Callable[[Tensor], None] | None = None,
                       shard: Shard = SINGLE) -> tuple[Tensor, list[float]]:
    """Inner level: Adam on delta (B, k, D_tok) from `init` for `steps` steps, fresh noise and t per step,
    no projection (released pgd), or on the gradient's sign (fast_at); returns (delta, loss of each step)
    [attack_util.py:soft_prompt_attack]. x0 (B, C, h, w) are the batch's latents, context0 the original
    encoder's contexts of the clean prompts; `on_step(delta)` sees delta after every step (for inspection).

    Under data parallelism x0 is the whole batch (its noise is drawn for all B rows, as one process would) and
    adv_tokens, context0 and init are this process's rows (`shard`); each row's delta is its own, so nothing is
    averaged but the logged loss."""
    delta = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    losses = []
    for _ in range(steps):
        x_t, _, t = noisy_latents(scheduler, x0, generator)  # released: fresh t_enc and partial-DDIM z'
        x_t, t = shard.rows(x_t, t)
        # Divided by the processes, each row's gradient is the one the whole batch's mean loss gives it.
        loss = attack_loss(models, x_t, t, adv_tokens, delta, context0) / shard.world
        (grad,) = torch.autograd.grad(loss, [delta])  # only delta: no .grad lands on the models
        delta.grad = grad.sign() if method == "fast_at" else grad
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(shard.average([loss.detach() * shard.world])[0]))
        if on_step is not None:
            on_step(delta.detach())
    return delta.detach(), losses


def take_rows(tokens: Tokens, rows: Tensor) -> Tokens:
    """Rows (B,) of pre-tokenised prompts."""
    rows = rows.to(tokens.input_ids.device)
    return Tokens(tokens.input_ids[rows], tokens.attention_mask[rows])


def _draw(n: int, size: int, generator: torch.Generator) -> Tensor:
    """`size` indices in [0, n) with replacement, on the CPU."""
    return torch.randint(0, n, (size,), generator=generator, device=generator.device).cpu()


def _start(bundle: ModelBundle, cfg: AdvUnlearnConfig) -> tuple[Models, list[nn.Parameter]]:
    """The trained module: a text-encoder copy (the bundle's encoder stays the original) or a UNet LoRA."""
    if cfg.module == "unet":
        add_lora(bundle.unet, cfg.lora_group, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
        return Models(bundle.unet, bundle.text, tuner_layers(bundle.unet)), lora_parameters(bundle.unet)
    trained, params = trainable_copy(bundle.text, cfg.text_layers)
    return Models(bundle.unet, trained, []), params


def train_advunlearn(
    bundle: ModelBundle,
    target_prompts: Sequence[str],
    target_latents: Tensor,
    retain_prompts: Sequence[str],
    retain_latents: Tensor,
    cfg: AdvUnlearnConfig,
    *,
    target_index: Sequence[int] | None = None,
    retain_index: Sequence[int] | None = None,
    progress: bool = True,
    shard: Shard = SINGLE,
    on_step: StepHook | None = None,
) -> tuple[TextEncoder | nn.Module, list[dict]]:
    """Erase the concept of `target_prompts` robustly; returns (trained text encoder or LoRA UNet, history).

    Args:
        target_latents, retain_latents: (N, C, h, w) base-model samples of those prompts, in UNet space.
        target_index, retain_index: prompt id of each latent (default: latent i <- prompt i % P).
        shard: this process's rows of each batch under data parallelism (`cdc.methods.parallel`).
        on_step: called after each step with (step, the trained tensors), e.g. to snapshot them.
    The text encoder comes back as a new `TextEncoder` (use `dataclasses.replace(bundle, text=...)`);
    the UNet (unet mode) is the bundle's, with its LoRA, as in the other methods.
    """
    targets = check_prompts(target_prompts, "target_prompts")
    retains = check_prompts(retain_prompts, "retain_prompts")
    shard.check_batch(cfg.batch_size)
    shard.check_batch(cfg.retain_batch, "retain_batch")
    unet, sched, dev, dtype = bundle.unet, bundle.scheduler, bundle.unet.device, bundle.unet.dtype
    x_tgt = check_latents(target_latents, unet, "target_latents").to(device=dev, dtype=dtype)
    x_ret = check_latents(retain_latents, unet, "retain_latents").to(device=dev, dtype=dtype)
    idx_tgt = prompt_index(x_tgt.shape[0], len(targets), target_index)
    idx_ret = prompt_index(x_ret.shape[0], len(retains), retain_index)
    # The original encoder's contexts, once: (P, L, D), (R, L, D), (1, L, D).
    ctx0_tgt, ctx0_ret = encode(bundle.text, targets, dev, dtype), encode(bundle.text, retains, dev, dtype)
    uncond0 = encode(bundle.text, [""], dev, dtype)
    tok_tgt, tok_ret = bundle.text.tokenize(targets), bundle.text.tokenize(retains)  # (P, L), (R, L)
    candidates = candidate_ids(bundle.text, "all")

    models, params = _start(bundle, cfg)
    opt = make_optimizer(params, cfg.lr, cfg.weight_decay)
    gen = make_generator(cfg.seed)
    history: list[dict] = []
    start = time.perf_counter()
    for step in progress_bar(cfg.steps, progress, "AdvUnlearn"):
        pick = _draw(x_tgt.shape[0], cfg.batch_size, gen)
        x0, pid = x_tgt[pick.to(dev)], idx_tgt[pick]  # the whole batch; this process trains on its rows
        (rows,) = shard.rows(pid)
        tokens, ctx0 = take_rows(tok_tgt, rows), ctx0_tgt[rows.to(dev)]  # (B', L), (B', L, D)
        att: list[float] = []
        if cfg.attack_steps > 0 and step > cfg.warmup_steps:
            adv = insert_prefix(models.text, tokens, candidates[: cfg.attack_k])  # prefix slots, filled by delta
            (init,) = shard.rows(random_prefix(models.text, candidates, x0.shape[0], cfg.attack_k, gen))
            delta, att = soft_prompt_attack(models, sched, x0, adv, ctx0, init, cfg.attack_steps, cfg.attack_lr,
                                            cfg.attack_method, gen, shard=shard)
            ctx = adversarial_context(models.text, adv, delta)  # delta is a constant for the upper level
        else:
            ctx = models.text._context(tokens)
        x_t, _, t = noisy_latents(sched, x0, gen)
        x_t, t = shard.rows(x_t, t)
        b = x_t.shape[0]
        out = models.original(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond0.expand(b, -1, -1), ctx0]))
        e_u, e_c = out.chunk(2)
        loss_u = mse(models.current(x_t, t, ctx), e_u - cfg.negative_guidance * (e_c - e_u))
        loss_r = None
        if cfg.retain_weight > 0:
            rpick = _draw(x_ret.shape[0], cfg.retain_batch, gen)
            x_r, _, t_r = noisy_latents(sched, x_ret[rpick.to(dev)], gen)
            x_r, t_r, rid = shard.rows(x_r, t_r, idx_ret[rpick])
            pred_r = models.current(x_r, t_r, models.text._context(take_rows(tok_ret, rid)))
            loss_r = mse(pred_r, models.original(x_r, t_r, ctx0_ret[rid.to(dev)]))
        loss = loss_u if loss_r is None else loss_u + cfg.retain_weight * loss_r
        # The whole batch's losses, the same on every process: (loss, loss_u[, loss_r]).
        logged = [float(v) for v in shard.average([v.detach() for v in (loss, loss_u, loss_r) if v is not None])]
        check_finite("AdvUnlearn", step, loss=logged[0])
        grads, _ = clip_grads(shard.average(grads_of(loss, params)), cfg.max_grad_norm)
        apply_step(opt, params, grads)
        if on_step is not None:
            on_step(step, params)
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append({
                "step": step,
                "loss": logged[0],
                "loss_unlearn": logged[1],
                "loss_retain": None if loss_r is None else logged[2],
                "attack_loss_start": att[0] if att else None,
                "attack_loss_end": att[-1] if att else None,
                "seconds": time.perf_counter() - start,
            })
    if cfg.module == "unet":
        return unet, history
    return frozen(models.text, bundle.text), history


def attack_trace(
    erased: ModelBundle, original: TextEncoder, prompts: Sequence[str], latents: Tensor, cfg: AdvUnlearnConfig,
    steps: int,
) -> list[float]:
    """The inner attack replayed against an erased model for `steps` steps on latents (B, C, h, w) of prompts
    (B,): after each step, its loss on the same 8 fixed (noise, t) draws (the step's own draw is too noisy to
    read), i.e. how closely the soft prefix so far brings back the original model's concept prediction.

    `erased` carries the trained encoder (text mode) or the LoRA UNet (unet mode); `original` is the frozen
    encoder the original model's contexts come from. Seeded by cfg.seed; nothing of either model changes.
    """
    if len(prompts) != latents.shape[0]:
        raise ValueError(f"need one prompt per latent, got {len(prompts)} prompts and {latents.shape[0]} latents")
    unet, dev, dtype = erased.unet, erased.unet.device, erased.unet.dtype
    models = Models(unet, erased.text, tuner_layers(unet))
    gen = make_generator(cfg.seed)
    candidates = candidate_ids(original, "all")
    adv = insert_prefix(erased.text, erased.text.tokenize(list(prompts)), candidates[: cfg.attack_k])
    init = random_prefix(erased.text, candidates, len(prompts), cfg.attack_k, gen)
    x0 = latents.to(device=dev, dtype=dtype)
    context0 = encode(original, prompts, dev, dtype)
    draws = [noisy_latents(erased.scheduler, x0, gen) for _ in range(8)]  # (x_t, noise, t), fixed for every step
    trace: list[float] = []

    def evaluate(delta: Tensor) -> None:
        with torch.no_grad():
            trace.append(float(torch.stack([attack_loss(models, x_t, t, adv, delta, context0)
                                            for x_t, _, t in draws]).mean()))

    evaluate(init)
    soft_prompt_attack(models, erased.scheduler, x0, adv, context0, init, steps, cfg.attack_lr, cfg.attack_method,
                       gen, on_step=evaluate)
    return trace


Config = AdvUnlearnConfig  # params.yaml erase.advunlearn
NEEDS = ('target', 'retain')  # the samples `erase` learns from (`ErasureData`)


def erase(bundle: ModelBundle, data: ErasureData, cfg: AdvUnlearnConfig, *, progress: bool = True,
          shard: Shard = SINGLE, on_step: StepHook | None = None) -> tuple[ModelBundle, list[dict]]:
    """The erase stage's entry point: `train_advunlearn` on the target samples and the retain set; returns (bundle,
    history), the bundle a copy with the trained text encoder (text mode) or `bundle` with its LoRA (unet mode)."""
    data.need("AdvUnlearn", *NEEDS)
    trained, history = train_advunlearn(bundle, data.target_prompts, data.target_latents, data.retain_prompts,
                                        data.retain_latents, cfg, target_index=data.target_index, progress=progress,
                                        shard=shard, on_step=on_step)
    if trained is bundle.unet:
        return bundle, history
    return dataclasses.replace(bundle, text=trained), history
