"""RDC: robust domain correction. DoCo's domain correction, trained on the contexts an attacker would use.

One step, after `warmup_steps` discriminator-only steps (B = batch_size, x̂0 = predicted clean latent):
  x0 (B anchor samples), shared noise and t  ->  x_t;  p_i: the pair of row i (target prompt c_i, anchor a_i)
  real = x̂0(frozen base, x_t, a)                       no grad, LoRA disabled (as DoCo)
  adversarial target contexts c~_i, per row:
    buffer (chance buffer_share): [SOT, e_1..e_m, EOT], e one of the last `buffer_size` inverted embeddings
      e = argmin_e MSE(out_theta(x'_t, t', [SOT, e, EOT]), eps or v)   on target samples x' (textual inversion),
      `invert_steps` Adam steps every `invert_every` LoRA steps, from the newest entry (first: random words)
    prefix (otherwise): [SOT, delta_1..k, c_i, EOT],
      delta = argmin_delta MSE(eps_theta(x'_t, t', [SOT, delta, c_i]), eps_0(x'_t, t', c_i))   (AdvUnlearn's
      objective on target samples x' of c_i), `attack_steps` Adam steps on the gradient's sign (fast AT),
      from random vocabulary embeddings
  fake_adv   = x̂0(LoRA UNet, x_t, c~)      fake_clean = x̂0(LoRA UNet, x_t, c)      (same x_t)
  L_att   = BCE(D(fake_adv), real label)   L_clean = BCE(D(fake_clean), real label)   (real 0, fake 1)
  L_prior = MSE(LoRA UNet(x'_t, a'), eps/v)                                           DoCo's prior loss
  L_rel   = L_clean at theta' = theta - relearn_lr sum_s grad MSE(out_theta(x'_t, t', c'), eps or v)
            (`relearn_steps` simulated SGD steps of a relearner on target samples; first order: its gradient
            is taken at theta' and used at theta, as ResAlign / Meta-Unlearning)
  g_i = clip(dL_i/dLoRA) for i in att, clean, rel, prior   att, clean, prior: one 3B forward + one backward
                                                           (`route_blocks`: each row block its own gradient)
  update = w_att S(g_att) + w_clean S(g_clean) + w_rel S(g_rel),  S(g) = surgery(g, g_prior) (DoCo's rule)
           ("sum" mode: S(g) = g and + prior_weight g_prior once)
  L_D = BCE(D(real), 0) + mean over the fakes BCE(D(fake.detach()), 1); Adam step of D (every step)

Why the inverted tokens sit in the empty prompt: there they alone must carry the concept, as CCE's learned
word does; before the target prompt they would only have to re-enable a concept the prompt already names,
which is the prefix attack's threat model. The two adversaries so cover the prompt-side and the
prompt-free way back. Each adversary attacks the CURRENT model (the one under training), so the erasure is
trained on what its own latest weakness looks like; the buffer replays the last few, which a new attack
step alone would forget.

No empty-prompt term: "" is the unconditional branch of classifier-free guidance; moving it shifts every
prompt's guided prediction, which is what the prior loss protects. The buffer already trains the
concept out of empty-prompt contexts that carry it.

Cost, in forward passes of B rows through the UNet (a LoRA forward+backward ~ 3): DoCo ~ 7 (real 1, its 2B
forward+backward 6). RDC adds B LoRA rows (3), the prefix attack on its rows (~4 per attack step, plus two
text-encoder passes), the inversion (~3 x invert_steps / invert_every) and, when on, the relearner (~6 per
relearn step). Measured (world model, church, B 8, one CPU thread): attack_steps 1, attack_k 3, buffer_share
0.5, invert_steps 10 every 25 steps: 2.4x a DoCo step, 3.3x with the relearner (1 step). On the world
preset the text encoder (MiniLM, 23M weights) outweighs the UNet, so the attack's encoder passes are a large
share; on SD 1.x the UNet dominates and the ratio follows the UNet pass count.

Code layout as `cdc.methods.doco`: `rdc_run` sets a run up, `rdc_step` is one step returning a
`StepReport`, `train_rdc` is their loop and `erase` the uniform entry point. Not data-parallel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from cdc.bundle import ModelBundle
from cdc.config import bounded
from cdc.discriminator import make_discriminator
from cdc.embeddings import candidate_ids, context_from_embeddings, insert_prefix, prefix_embeddings, token_table
from cdc.lora import base_model
from cdc.losses import mse, noisy_latents, pred_eps, pred_x0, target_for, unet_pred
from cdc.methods.advunlearn import Models, adversarial_context, random_prefix, soft_prompt_attack, take_rows
from cdc.methods.domain import FAKE, REAL, DocoConfig, bce, warmup_pair
from cdc.methods.hooks import detach_first_token, forward_with, lora_leaves
from cdc.methods.parallel import SINGLE, Shard
from cdc.methods.surgery import SurgeryStats, clip_grads, combine, global_cosine
from cdc.methods.train import (
    ErasureData,
    PairedData,
    StepHook,
    apply_step,
    check_finite,
    check_latents,
    check_pairs,
    grads_of,
    progress_bar,
    prompt_index,
    start_lora_run,
)
from cdc.text import Tokens

ERASE_TERMS = ("att", "clean", "rel")  # the erase side of the update, in this order
HISTORY_KEYS = (
    "step",
    "loss_d",
    "loss_att",
    "loss_clean",
    "loss_prior",
    "loss_relearn",
    "attack_loss_start",
    "attack_loss_end",
    "invert_loss_start",
    "invert_loss_end",
    "cos_att_prior",
    "cos_clean_prior",
    "cos_relearn_prior",
    "cos_att_clean",
    "surgery_fired",
    "buffer_size",
    "buffer_rows",
    "d_real_acc",
    "d_fake_acc",
    "seconds",
)


@dataclass(frozen=True)
class RdcConfig(DocoConfig):
    """RDC: DoCo (every inherited knob as there) on adversarial target contexts, plus an anti-relearning term."""

    attack_weight: float = bounded(0)  # weight of S(g_att) in the update; 0: no adversary (no attack, no inversion)
    clean_weight: float = bounded(0)  # weight of S(g_clean), DoCo's own term on the clean target prompt
    attack_k: int = bounded(1)  # soft prefix tokens before the target prompt
    attack_steps: int = bounded(0)  # signed-gradient steps of the prefix attack per LoRA step; 0: a random prefix
    attack_lr: float = bounded(0, lo_open=True)  # Adam lr on the prefix's gradient sign
    buffer_share: float = bounded(0, 1)  # chance a row's adversarial context is a buffer entry; 0: no inversion
    buffer_size: int = bounded(1)  # inverted embeddings kept (the newest)
    invert_every: int = bounded(1)  # LoRA steps between inversions (the first LoRA step inverts)
    invert_k: int = bounded(1)  # learned tokens per inversion, alone in the empty prompt
    invert_steps: int = bounded(1)  # Adam steps per inversion
    invert_lr: float = bounded(0, lo_open=True)  # their learning rate
    relearn_weight: float = bounded(0)  # weight of S(g_rel), the anti-relearning term; 0: off
    relearn_steps: int = bounded(1)  # simulated SGD steps of the relearner
    relearn_lr: float = bounded(0, lo_open=True)  # their learning rate

    def __post_init__(self) -> None:
        """DoCo's checks, and an erase term at the current parameters."""
        super().__post_init__()
        if self.attack_weight + self.clean_weight <= 0:
            raise ValueError("attack_weight and clean_weight are both 0: nothing erases at the current parameters "
                             "(the relearn term alone only looks ahead)")


Config = RdcConfig  # params.yaml erase.rdc
NEEDS = ("target", "anchor")  # the samples `erase` learns from (`ErasureData`)


@dataclass
class Inverted:
    """One buffer entry: learned word embeddings and the context they make alone in the empty prompt."""

    embedding: Tensor  # (m, D_tok) float32, m = invert_k
    start: Tensor  # (m, D_tok) where the inversion started: the previous entry, or random vocabulary embeddings
    context: Tensor  # (1, L', D) in the UNet's dtype, no grad
    step: int  # the step that learned it


@dataclass
class RdcState:
    """What an RDC run carries from step to step (built by `rdc_run`; `rdc_step` mutates it).

    As `DocoState`, plus the target samples the adversaries attack on and the buffer of inverted embeddings.
    """

    cfg: RdcConfig
    unet: nn.Module
    scheduler: object
    models: Models  # the LoRA UNet (current), and the frozen text encoder; base_model() is the original
    data: PairedData  # anchor latents (N, C, h, w); contexts (target (P, L', D), anchor (P, L', D))
    target_latents: Tensor  # (M, C, h, w) base-model samples of the target prompts
    target_index: Tensor  # (M,) the target prompt each was drawn from
    target_pools: list[Tensor]  # per target prompt p: indices into target_latents of p's samples (all if none)
    target_tokens: Tokens  # (P, L) the target prompts, tokenised
    empty_tokens: Tokens  # (1, L) [SOT, m slots, EOT] for the inverted embeddings
    candidates: Tensor  # (V',) token ids random inits draw from
    params: list[nn.Parameter]  # LoRA tensors, fixed order
    names: list[str]
    layers: list[nn.Module]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    disc: nn.Module  # PatchGAN: (B, C, h, w) -> (B, 1, p, p)
    d_params: list[nn.Parameter]
    d_optimizer: torch.optim.Optimizer
    to_d: Callable[..., Tensor]  # pred_x0 or pred_eps
    buffer: list[Inverted] = field(default_factory=list)  # oldest first, at most cfg.buffer_size


@dataclass
class PrefixAttack:
    """What the fast prefix attack found for b rows (its objective: `advunlearn.attack_loss`)."""

    tokens: Tokens  # (b, L) target prompts with k prefix slots
    init: Tensor  # (b, k, D_tok) random vocabulary embeddings it started from
    delta: Tensor  # (b, k, D_tok) the prefix it ended at
    x0: Tensor  # (b, C, h, w) target samples it attacked on
    context0: Tensor  # (b, L', D) the clean target prompts' contexts (original model's side)
    losses: list[float]  # its objective at each step (that step's noise)


@dataclass
class StepReport:
    """What one `rdc_step` did. Tensors are detached; logits on the CPU. Warm-up steps fill only the D fields."""

    step: int
    trained_lora: bool
    loss_d: float  # BCE(D(real), 0) + mean_f BCE(D(fake_f), 1)
    logits_real: Tensor  # (B, 1, p, p)
    logits_fake: Tensor  # (F B, 1, p, p): D's logits on each fake it saw (adv, then clean), concatenated
    losses: dict[str, float] = field(default_factory=dict)  # att, clean, prior, rel: those computed this step
    attack_losses: list[float] = field(default_factory=list)  # the prefix attack's objective per step
    invert_losses: list[float] = field(default_factory=list)  # the inversion's loss per step ([] if none ran)
    buffer_size: int = 0  # entries after this step's inversion
    buffer_rows: int = 0  # rows whose adversarial context came from the buffer
    x_t: Tensor | None = None  # (B, C, h, w) the step's noisy anchor latents
    t: Tensor | None = None  # (B,)
    context_adv: Tensor | None = None  # (B, L', D) the adversarial target contexts
    grads: dict[str, list[Tensor]] = field(default_factory=dict)  # clipped g per term ("prior" included)
    adjusted: dict[str, list[Tensor]] = field(default_factory=dict)  # S(g) per erase term
    surgery: dict[str, SurgeryStats] = field(default_factory=dict)  # per erase term, against g_prior
    update: list[Tensor] | None = None  # what the optimiser got

    @property
    def inverted(self) -> bool:
        """Whether this step learned a new buffer entry."""
        return bool(self.invert_losses)

    @property
    def d_real_acc(self) -> float:
        """Share of real patches D calls real (logit < 0)."""
        return float((self.logits_real < 0).float().mean())

    @property
    def d_fake_acc(self) -> float:
        """Share of fake patches D calls fake (logit > 0)."""
        return float((self.logits_fake > 0).float().mean())

    def history_row(self, seconds: float) -> dict:
        """The `train_rdc` history row of this step (keys `HISTORY_KEYS`)."""
        row: dict = dict.fromkeys(HISTORY_KEYS)
        first_last = lambda v: (v[0], v[-1]) if v else (None, None)  # noqa: E731
        row.update(
            step=self.step, loss_d=self.loss_d, buffer_size=self.buffer_size, buffer_rows=self.buffer_rows,
            d_real_acc=self.d_real_acc, d_fake_acc=self.d_fake_acc, seconds=seconds,
            loss_att=self.losses.get("att"), loss_clean=self.losses.get("clean"),
            loss_prior=self.losses.get("prior"), loss_relearn=self.losses.get("rel"),
        )
        row["attack_loss_start"], row["attack_loss_end"] = first_last(self.attack_losses)
        row["invert_loss_start"], row["invert_loss_end"] = first_last(self.invert_losses)
        if self.trained_lora:
            cos = {k: s.cosine for k, s in self.surgery.items()}
            row.update(cos_att_prior=cos.get("att"), cos_clean_prior=cos.get("clean"),
                       cos_relearn_prior=cos.get("rel"),
                       surgery_fired=sum(s.fired for s in self.surgery.values()) / len(self.surgery))
            if "att" in self.grads and "clean" in self.grads:
                row["cos_att_clean"] = global_cosine(self.grads["att"], self.grads["clean"])
        return row


@contextmanager
def route_blocks(unet: nn.Module, params: list[nn.Parameter], sizes: Sequence[int]) -> Iterator[list[list[Tensor]]]:
    """`hooks.route_grads` for any number of row blocks: rows of block 0 see the LoRA through `params`, those of
    block i > 0 through shadow leaves of their own (same storage, no copy), so ONE backward of a summed loss gives
    each block's d/dLoRA. Yields the shadow lists of blocks 1.. (same order as `params`)."""
    sizes = [int(s) for s in sizes]
    shadows = [[p.detach().requires_grad_(True) for p in params] for _ in sizes[1:]]
    weights = {id(p): [p, *(s[i] for s in shadows)] for i, p in enumerate(params)}
    leaves = [m for m in lora_leaves(unet) if id(m.weight) in weights]

    def routed(module: nn.Module, ws: list[Tensor]):
        def forward(x: Tensor) -> Tensor:  # x: (sum(sizes), ...), batch first
            if x.shape[0] != sum(sizes):
                raise RuntimeError(f"routed LoRA layer got {x.shape[0]} rows, expected {sum(sizes)}")
            return torch.cat([forward_with(module, part, w) for part, w in zip(x.split(sizes), ws)])

        return forward

    for m in leaves:
        m.forward = routed(m, weights[id(m.weight)])
    try:
        yield shadows
    finally:
        for m in leaves:
            del m.forward


@contextmanager
def rdc_run(bundle: ModelBundle, data: ErasureData, cfg: RdcConfig) -> Iterator[RdcState]:
    """Set up an RDC run on `bundle.unet` (a fresh seeded LoRA added in place) and yield its state;
    `rdc_step(state, step)` for step = 1..cfg.steps inside the block is the whole training."""
    data.need("RDC", *NEEDS)
    targets, anchors = check_pairs(data.target_prompts, data.anchor_prompts)
    unet, text = bundle.unet, bundle.text
    dev, dtype = unet.device, unet.dtype
    x_tgt = check_latents(data.target_latents, unet, "target_latents").to(device=dev, dtype=dtype)
    t_index = prompt_index(x_tgt.shape[0], len(targets), data.target_index)
    everything = torch.arange(x_tgt.shape[0])
    pools = [torch.nonzero(t_index == p).flatten() for p in range(len(targets))]
    run = start_lora_run(bundle, cfg, data.anchor_latents, data.anchor_index, targets, anchors)
    candidates = candidate_ids(text, "all")
    channels, size = run.data.latents.shape[1], run.data.latents.shape[-1]
    disc = make_discriminator(channels, size, cfg.d_layers, cfg.d_width, cfg.d_norm, cfg.seed, dev)
    name_of = {id(p): n for n, p in unet.named_parameters()}
    state = RdcState(
        cfg=cfg,
        unet=unet,
        scheduler=bundle.scheduler,
        models=Models(unet, text, run.layers),
        data=run.data,
        target_latents=x_tgt,
        target_index=t_index,
        target_pools=[p if len(p) else everything for p in pools],
        target_tokens=text.tokenize(targets),
        empty_tokens=insert_prefix(text, text.tokenize([""]), candidates[: cfg.invert_k]),
        candidates=candidates,
        params=run.params,
        names=[name_of[id(p)] for p in run.params],
        layers=run.layers,
        optimizer=run.optimizer,
        generator=run.generator,
        disc=disc,
        d_params=list(disc.parameters()),
        d_optimizer=torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999)),
        to_d=pred_x0 if cfg.d_input == "x0" else pred_eps,
    )
    insert_prefix(text, state.target_tokens, candidates[: cfg.attack_k])  # ValueError now if the prefix cannot fit
    with detach_first_token(unet) if cfg.detach_first_token else nullcontext():
        yield state


def _target_samples(state: RdcState, prompt_ids: Tensor) -> Tensor:
    """One target sample per row, of that row's prompt: (b, C, h, w)."""
    u = torch.rand(len(prompt_ids), generator=state.generator)
    picks = []
    for p, ui in zip(prompt_ids.tolist(), u.tolist()):
        pool = state.target_pools[p]
        picks.append(int(pool[min(int(ui * len(pool)), len(pool) - 1)]))
    return state.target_latents[torch.tensor(picks, device=state.target_latents.device)]


def prefix_attack(state: RdcState, prompt_ids: Tensor) -> PrefixAttack:
    """AdvUnlearn's fast attack on the CURRENT model for rows of target prompts `prompt_ids` (b,): k prefix
    embeddings from random vocabulary ones, cfg.attack_steps sign steps of `soft_prompt_attack`."""
    cfg, text = state.cfg, state.models.text
    tokens = insert_prefix(text, take_rows(state.target_tokens, prompt_ids), state.candidates[: cfg.attack_k])  # (b, L)
    x0 = _target_samples(state, prompt_ids)  # (b, C, h, w)
    context0 = state.data.contexts[0][prompt_ids.to(state.unet.device)]  # (b, L', D)
    init = random_prefix(text, state.candidates, len(prompt_ids), cfg.attack_k, state.generator)  # (b, k, D_tok)
    delta, losses = soft_prompt_attack(state.models, state.scheduler, x0, tokens, context0, init, cfg.attack_steps,
                                       cfg.attack_lr, "fast_at", state.generator)
    return PrefixAttack(tokens, init, delta, x0, context0, losses)


def empty_prefix_context(state: RdcState, embedding: Tensor) -> Tensor:
    """Context (1, L', D) of [SOT, e_1..e_m, EOT] for embeddings (m, D_tok); carries their gradient."""
    text = state.models.text
    embeds = prefix_embeddings(token_table(text), state.empty_tokens, embedding.to(text.device))
    return context_from_embeddings(text, state.empty_tokens, embeds).to(state.unet.dtype)


def invert(state: RdcState, step: int) -> list[float]:
    """Textual inversion on the CURRENT model: cfg.invert_steps Adam steps on m embeddings alone in the empty
    prompt, from the newest buffer entry (first: random vocabulary embeddings), so the model denoises target
    samples; the result joins the buffer (oldest dropped past cfg.buffer_size). Returns the loss per step."""
    cfg, sched, gen = state.cfg, state.scheduler, state.generator
    if state.buffer:
        init = state.buffer[-1].embedding
    else:
        init = random_prefix(state.models.text, state.candidates, 1, cfg.invert_k, gen)[0]  # (m, D_tok)
    vec = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([vec], lr=cfg.invert_lr)
    n = state.target_latents.shape[0]
    losses = []
    for _ in range(cfg.invert_steps):
        pick = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        x0 = state.target_latents[pick.to(state.target_latents.device)]  # (B, C, h, w)
        x_t, noise, t = noisy_latents(sched, x0, gen)
        ctx = empty_prefix_context(state, vec).expand(x0.shape[0], -1, -1)  # (B, L', D)
        loss = mse(unet_pred(state.unet, x_t, t, ctx), target_for(sched, x0, noise, t))
        (vec.grad,) = torch.autograd.grad(loss, [vec])  # only vec: no .grad lands on the LoRA
        opt.step()
        losses.append(float(loss.detach()))
    check_finite("RDC", step, invert_loss=losses[-1])
    embedding = vec.detach()
    with torch.no_grad():
        state.buffer.append(Inverted(embedding, init.detach(), empty_prefix_context(state, embedding), step))
    del state.buffer[: -cfg.buffer_size]
    return losses


def adversarial_contexts(state: RdcState, prompt_ids: Tensor) -> tuple[Tensor, list[float], int]:
    """Adversarial target contexts (B, L', D) for rows of prompts `prompt_ids` (B,): a buffer entry with chance
    cfg.buffer_share (once the buffer holds one), else the prefix attack's. Returns (contexts, attack losses,
    rows from the buffer)."""
    cfg, gen = state.cfg, state.generator
    b = len(prompt_ids)
    from_buffer = torch.rand(b, generator=gen) < cfg.buffer_share  # (B,)
    if not state.buffer:
        from_buffer[:] = False
    entry = torch.randint(0, max(len(state.buffer), 1), (b,), generator=gen)  # (B,)
    contexts: list[Tensor | None] = [None] * b
    for i in torch.nonzero(from_buffer).flatten().tolist():
        contexts[i] = state.buffer[int(entry[i])].context[0]
    rows = torch.nonzero(~from_buffer).flatten()
    losses: list[float] = []
    if len(rows):
        attack = prefix_attack(state, prompt_ids[rows])
        losses = attack.losses
        with torch.no_grad():
            ctx = adversarial_context(state.models.text, attack.tokens, attack.delta).to(state.unet.dtype)
        for j, i in enumerate(rows.tolist()):
            contexts[i] = ctx[j]
    return torch.stack(contexts), losses, int(from_buffer.sum())


def rdc_step(state: RdcState, step: int) -> StepReport:
    """One RDC step (1-based `step`): after the warm-up, the adversaries and one LoRA update with surgery; then one
    discriminator update on real against every fake, on one batch of B = cfg.batch_size anchor latents."""
    cfg, sched, gen, data = state.cfg, state.scheduler, state.generator, state.data
    pick = torch.randint(0, data.latents.shape[0], (cfg.batch_size,), generator=gen)  # as PairedData.batch
    prompt_ids = data.index[pick]  # (B,)
    x0 = data.latents[pick.to(data.latents.device)]  # (B, C, h, w)
    ctx_t, ctx_a = (c[prompt_ids.to(c.device)] for c in data.contexts)  # (B, L', D) x 2
    x_t, _, t = noisy_latents(sched, x0, gen)
    if step <= cfg.warmup_steps:
        real, fake = warmup_pair(state.unet, state.layers, state.scheduler, state.to_d, x_t, t, ctx_t, ctx_a)
        fakes, d_adv, fields = [fake], [], {}
    else:
        real, fakes, d_adv, fields = _lora_update(state, step, prompt_ids, x_t, t, ctx_t, ctx_a)
    loss_d, logits_real, logits_fake = _discriminator_update(state, step, real, fakes, d_adv)
    return StepReport(step=step, trained_lora=step > cfg.warmup_steps, loss_d=loss_d,
                      logits_real=logits_real.detach().cpu(), logits_fake=logits_fake.detach().cpu(),
                      buffer_size=len(state.buffer), **fields)


def _lora_update(state: RdcState, step: int, prompt_ids: Tensor, x_t: Tensor, t: Tensor, ctx_t: Tensor,
                 ctx_a: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor], dict]:
    """The generator half of a step: adversaries, L_att / L_clean / L_prior (and L_rel), their clipped gradients,
    the surgery of each erase gradient against g_prior, one LoRA step. Returns (real, fakes for D, D's
    adversarial grads (quirk 1 of doco.py) or [], the StepReport fields)."""
    cfg, unet, sched, params, gen = state.cfg, state.unet, state.scheduler, state.params, state.generator
    fields: dict = {"x_t": x_t.detach(), "t": t.detach()}
    j = step - cfg.warmup_steps  # 1-based LoRA step
    # Erase rows on x_t: name -> context (B, L', D).
    rows: dict[str, Tensor] = {}
    if cfg.attack_weight > 0:
        if cfg.buffer_share > 0 and (j - 1) % cfg.invert_every == 0:
            fields["invert_losses"] = invert(state, step)
        ctx_adv, fields["attack_losses"], fields["buffer_rows"] = adversarial_contexts(state, prompt_ids)
        rows["att"] = fields["context_adv"] = ctx_adv
    if cfg.clean_weight > 0:
        rows["clean"] = ctx_t
    with torch.no_grad(), base_model(unet, state.layers):
        real = state.to_d(sched, unet_pred(unet, x_t, t, ctx_a), x_t, t)  # (B, C, h, w)
    xb, _, ctx_b = state.data.batch(cfg.batch_size, gen)  # fresh anchor pairs for the prior loss
    xb_t, noise_b, t_b = noisy_latents(sched, xb, gen)
    b, n = x_t.shape[0], len(rows)
    # One (n+1)B forward: [erase rows on x_t ..., prior rows]; each block's LoRA gradient from one backward.
    with route_blocks(unet, params, [b] * n + [xb.shape[0]]) as shadows:
        out = unet_pred(unet, torch.cat([x_t] * n + [xb_t]), torch.cat([t] * n + [t_b]),
                        torch.cat([*rows.values(), ctx_b]))  # ((n+1)B, C, h, w)
    *erase_out, prior_out = out.split([b] * n + [xb.shape[0]])
    fakes = [state.to_d(sched, o, x_t, t) for o in erase_out]  # (B, C, h, w) each
    losses = {name: bce(state.disc(f), REAL) for name, f in zip(rows, fakes)}  # D on each fake apart (its BN)
    losses["prior"] = mse(prior_out, target_for(sched, xb, noise_b, t_b))
    values = {k: float(v.detach()) for k, v in losses.items()}
    check_finite("RDC", step, **{f"loss_{k}": v for k, v in values.items()})
    extra = state.d_params if cfg.d_gets_adv_grads else []
    blocks = [params, *shadows]  # erase blocks in `rows` order, then the prior block
    grads = grads_of(sum(losses.values()), [p for block in blocks for p in block] + extra)
    m = len(params)
    g = {name: grads[i * m : (i + 1) * m] for i, name in enumerate([*rows, "prior"])}
    d_adv = grads[len(blocks) * m :]
    if cfg.relearn_weight > 0:
        values["rel"], g["rel"] = _relearn(state, step, x_t, t, ctx_t)
    g = {k: clip_grads(v, cfg.max_grad_norm)[0] for k, v in g.items()}
    update, adjusted, stats = _surgery(g, cfg)
    apply_step(state.optimizer, params, update)
    fields.update(losses=values, grads={k: [x.detach() for x in v] for k, v in g.items()}, adjusted=adjusted,
                  surgery=stats, update=[u.detach() for u in update])
    return real, [f.detach() for f in fakes], d_adv, fields


def _relearn(state: RdcState, step: int, x_t: Tensor, t: Tensor, ctx_t: Tensor) -> tuple[float, list[Tensor]]:
    """First-order anti-relearning: simulate cfg.relearn_steps SGD steps of a relearner (denoising loss on target
    samples and prompts) on the LoRA, evaluate L_clean there on the step's (x_t, t, c), and return (L_rel, its
    gradient at the simulated parameters). The LoRA is restored exactly."""
    cfg, unet, sched, params, gen = state.cfg, state.unet, state.scheduler, state.params, state.generator
    n, b = state.target_latents.shape[0], x_t.shape[0]
    saved = [p.detach().clone() for p in params]
    try:
        for _ in range(cfg.relearn_steps):
            pick = torch.randint(0, n, (b,), generator=gen)
            x0 = state.target_latents[pick.to(state.target_latents.device)]  # (B, C, h, w)
            ctx = state.data.contexts[0][state.target_index[pick].to(unet.device)]  # (B, L', D) their prompts
            xr_t, noise, tr = noisy_latents(sched, x0, gen)
            grads = grads_of(mse(unet_pred(unet, xr_t, tr, ctx), target_for(sched, x0, noise, tr)), params)
            with torch.no_grad():
                for p, gr in zip(params, grads):
                    p.sub_(cfg.relearn_lr * gr)  # theta' = theta - relearn_lr grad
        fake = state.to_d(sched, unet_pred(unet, x_t, t, ctx_t), x_t, t)  # (B, C, h, w) at theta'
        loss = bce(state.disc(fake), REAL)
        value = float(loss.detach())
        check_finite("RDC", step, loss_relearn=value)
        return value, grads_of(loss, params)  # first order: dL_rel/dtheta' stands in for dL_rel(theta')/dtheta
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def _surgery(g: dict[str, list[Tensor]], cfg: RdcConfig) -> tuple[list[Tensor], dict, dict]:
    """update = sum_i w_i S(g_i) over the erase terms, S = surgery against g_prior (`surgery.combine`); in "sum"
    mode S(g) = g and prior_weight g_prior is added once. Returns (update, S(g_i) per term, stats per term)."""
    weights = {"att": cfg.attack_weight, "clean": cfg.clean_weight, "rel": cfg.relearn_weight}
    g_prior = g["prior"]
    update = [torch.zeros_like(x) for x in g_prior]
    adjusted, stats = {}, {}
    for name in ERASE_TERMS:
        if name not in g:
            continue
        adjusted[name], stats[name] = combine(g[name], g_prior, cfg.surgery, cfg.lam, 0.0, cfg.per_tensor)
        update = [u + weights[name] * a for u, a in zip(update, adjusted[name])]
    if cfg.surgery == "sum":
        update = [u + cfg.prior_weight * p for u, p in zip(update, g_prior)]
    return update, {k: [x.detach() for x in v] for k, v in adjusted.items()}, stats


def _discriminator_update(state: RdcState, step: int, real: Tensor, fakes: list[Tensor],
                          d_adv: list[Tensor]) -> tuple[float, Tensor, Tensor]:
    """One Adam step of D on BCE(D(real), 0) + mean_f BCE(D(fake_f), 1), each fake its own batch (BatchNorm as
    DoCo's). Returns (L_D, logits real (B, 1, p, p), logits of the fakes concatenated (F B, 1, p, p))."""
    state.d_optimizer.zero_grad(set_to_none=True)
    logits_real = state.disc(real.detach())
    logits_fake = [state.disc(f.detach()) for f in fakes]
    loss_d = bce(logits_real, REAL) + sum(bce(lf, FAKE) for lf in logits_fake) / len(fakes)
    value = float(loss_d.detach())
    check_finite("RDC", step, loss_d=value)
    loss_d.backward()
    for p, adv in zip(state.d_params, d_adv):  # quirk 1 of doco.py: D also steps on the erase losses' dD
        p.grad = adv if p.grad is None else p.grad + adv
    state.d_optimizer.step()
    return value, logits_real, torch.cat(logits_fake)


def train_rdc(bundle: ModelBundle, data: ErasureData, cfg: RdcConfig, *, progress: bool = True,
              on_step: StepHook | None = None) -> tuple[nn.Module, list[dict]]:
    """Erase the concept of `data` from `bundle.unet` with RDC; returns (the UNet with its LoRA, history rows).

    Learns from data's paired prompts, anchor samples (DoCo's frame) and target samples (the adversaries').
    `on_step(step, LoRA tensors)` is called after each step. The LoRA is added to `bundle.unet` in place.
    """
    history: list[dict] = []
    with rdc_run(bundle, data, cfg) as state:
        start = time.perf_counter()
        for step in progress_bar(cfg.steps, progress, "RDC"):
            report = rdc_step(state, step)
            if on_step is not None:
                on_step(step, state.params)
            if step % cfg.log_every == 0 or step == cfg.steps:
                history.append(report.history_row(time.perf_counter() - start))
    return bundle.unet, history


def erase(bundle: ModelBundle, data: ErasureData, cfg: RdcConfig, *, progress: bool = True, shard: Shard = SINGLE,
          on_step: StepHook | None = None) -> tuple[ModelBundle, list[dict]]:
    """The erase stage's entry point: `train_rdc` on data's anchor and target samples; returns (bundle with its
    LoRA, history). Not data-parallel: a shard of several processes is refused."""
    if shard.world > 1:
        raise ValueError(f"RDC does not support data parallelism (got {shard.world} processes); run one process")
    _, history = train_rdc(bundle, data, cfg, progress=progress, on_step=on_step)
    return bundle, history
