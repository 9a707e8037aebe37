"""UnlearnDiffAtk (text_grad, prefix_k): k discrete prefix tokens that make an erased model denoise
the base model's images of a prompt again [Zhang et al., ECCV'24; OPTML-Group/Diffusion-MU-Attack@5a3e5d3:
src/attackers/text_grad_.py, src/tasks/classifier_.py].

As released: per prefix slot a weight vector on the probability simplex over the vocabulary (start:
uniform); every iteration draws one token per slot from those weights (forward: a one-hot sample,
backward: the straight-through gradient clipped by hardtanh, `STERandSelect`), takes an Adam step
(lr, weight decay) on the weights and projects them back onto the simplex (the released bisection;
here the exact sort-based Euclidean projection, which solves the same problem). The loss is the
erased model's denoising MSE on the target latents, fresh noise each iteration, t fixed per round on
the grid T//n//2 + i*T//n (`sampled_t`, n = 50 released), `iterations` steps per round (40 released);
after each round the weights are projected to tokens by argmax, and the released attack stops at the
first round whose image the detector flags (`stop` here). White-box through the erased model's own
text encoder and UNet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdc.attacks.config import PrefixAttackConfig
from cdc.bundle import ModelBundle
from cdc.embeddings import (
    candidate_ids,
    context_from_embeddings,
    insert_prefix,
    prefix_embeddings,
    token_table,
    token_text,
)
from cdc.losses import add_noise, mse, target_for, unet_pred
from cdc.text import Tokens


@dataclass(frozen=True)
class PrefixAttackResult:
    """The attack's tokens and its trace."""

    token_ids: list[int]  # k ids after the last round run (argmax of the weights, as released)
    tokens: list[str]  # those ids decoded one by one
    prompt: str  # the adversarial prompt text: tokens, then the original prompt
    retokenizes: bool  # tokenizing `prompt` gives exactly the optimised ids (prefix inserted)
    losses: list[float]  # attack loss of every iteration (sampled tokens, that iteration's noise)
    best_iteration: int  # index of the lowest loss in `losses`
    best_token_ids: list[int]  # the ids sampled at best_iteration
    initial_token_ids: list[int]  # the ids sampled at iteration 0 (the random start)
    rounds: int  # rounds run (fewer than cfg.timesteps when `stop` said so)


def t_grid(n_train: int, n: int) -> list[int]:
    """The released `sampled_t`: n timesteps T//n//2 + i*T//n."""
    step = max(n_train // n, 1)
    return list(range(step // 2, n_train, step))[:n]


def project_simplex(w: Tensor) -> Tensor:
    """Euclidean projection of each row of w (k, C) onto the probability simplex [Duchi et al. 2008]."""
    u, _ = torch.sort(w, dim=-1, descending=True)
    css = u.cumsum(-1) - 1.0
    ind = torch.arange(1, w.shape[-1] + 1, device=w.device, dtype=w.dtype)
    rho = (u - css / ind > 0).sum(-1, keepdim=True)  # (k, 1), >= 1
    tau = css.gather(-1, rho - 1) / rho.to(w.dtype)
    return (w - tau).clamp_min(0.0)


class _SampleSTE(torch.autograd.Function):
    """Forward: one token per row drawn from the weights, as one-hot; backward: hardtanh(grad) (`STERandSelect`)."""

    @staticmethod
    def forward(ctx, w: Tensor, generator: torch.Generator) -> Tensor:  # noqa: ANN001
        probs = w.detach().float().cpu()
        idx = torch.multinomial(probs, 1, generator=generator).view(-1)  # (k,)
        return F.one_hot(idx, w.shape[-1]).to(device=w.device, dtype=w.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return F.hardtanh(grad), None


def attack_loss(bundle: ModelBundle, unet: nn.Module, tokens: Tokens, embeds: Tensor, x0: Tensor,
                noise: Tensor, t: Tensor) -> Tensor:
    """Denoising MSE of `unet` on x0 (N, C, h, w) for context from word embeddings (1, L, D_tok), noise and t (N,)."""
    ctx = context_from_embeddings(bundle.text, tokens, embeds)  # (1, L', D)
    ctx = ctx.to(bundle.dtype).expand(x0.shape[0], -1, -1)
    pred = unet_pred(unet, add_noise(bundle.scheduler, x0, noise, t), t, ctx)
    return mse(pred, target_for(bundle.scheduler, x0, noise, t))


def prefix_loss(bundle: ModelBundle, prompt: str, prefix_ids: list[int] | None, x0: Tensor,
                draws: list[tuple[Tensor, Tensor]], *, unet: nn.Module | None = None) -> float:
    """Mean attack loss of a fixed prefix (None: the prompt alone) over given (noise, t) draws, no gradient."""
    unet = bundle.unet if unet is None else unet
    tokens = bundle.text.tokenize([prompt])
    if prefix_ids:
        tokens = insert_prefix(bundle.text, tokens, prefix_ids)
    x0 = x0.to(device=bundle.device, dtype=bundle.dtype)
    table = token_table(bundle.text)
    with torch.no_grad():
        embeds = table[tokens.input_ids]
        losses = [attack_loss(bundle, unet, tokens, embeds, x0, n.to(x0), t.to(x0.device)) for n, t in draws]
    return float(torch.stack(losses).mean())


def adversarial_prompt(bundle: ModelBundle, prompt: str, token_ids: list[int]) -> str:
    """The tokens' text, space-separated, then the prompt."""
    return " ".join([*(token_text(bundle.text, i) for i in token_ids), prompt])


class PrefixAttack:
    """The attack on several prompts at once, a round at a time, so they share each batch and each round's
    detector check.

    Prompt i has its own simplex weights, Adam state and generator (seeded cfg.seed, drawn in the released
    order: tokens, then noise), and its loss is the mean over its own images only, so its attack is the one
    it would get alone; the prompts only share the UNet call. `unet` overrides the bundle's (an erased LoRA
    UNet); `candidates` (C,) reuses `candidate_ids`.
    """

    def __init__(self, bundle: ModelBundle, prompts: Sequence[str], target_latents: Sequence[Tensor],
                 cfg: PrefixAttackConfig, *, unet: nn.Module | None = None,
                 candidates: Tensor | None = None) -> None:
        if len(prompts) != len(target_latents):
            raise ValueError(f"{len(prompts)} prompts but {len(target_latents)} target latent sets")
        self.bundle, self.prompts, self.cfg = bundle, list(prompts), cfg
        text = bundle.text
        self.unet = bundle.unet if unet is None else unet
        if candidates is None:
            candidates = candidate_ids(text, cfg.vocabulary)
        self.candidates = candidates.to(text.device)
        self.full = token_table(text)  # (V, D_tok)
        self.table = self.full[self.candidates].float()  # (C, D_tok)
        n_cand = self.table.shape[0]
        self.gens = [torch.Generator().manual_seed(cfg.seed) for _ in self.prompts]
        self.x0 = [x.to(device=bundle.device, dtype=bundle.dtype) for x in target_latents]  # (n_i, C, h, w) each
        # prefix ids are filled in per step; one (1, L) row per prompt
        self.tokens = [insert_prefix(text, text.tokenize([p]), [0] * cfg.k) for p in self.prompts]
        self.w = []  # per prompt (k, C) simplex weights
        for gen in self.gens:
            w0 = torch.rand(cfg.k, n_cand, generator=gen) if cfg.rand_init else torch.full((cfg.k, n_cand), 1 / n_cand)
            self.w.append(project_simplex(w0.to(text.device)).requires_grad_(True))
        self.opts = [torch.optim.Adam([w], lr=cfg.lr, weight_decay=cfg.weight_decay) for w in self.w]
        self.n_train = int(bundle.scheduler.config.num_train_timesteps)
        self.schedule = t_grid(self.n_train, cfg.timesteps)
        self.losses: list[list[float]] = [[] for _ in self.prompts]
        self.sampled: list[list[list[int]]] = [[] for _ in self.prompts]
        self.final: list[list[int]] = [[] for _ in self.prompts]
        self.rounds = [0] * len(self.prompts)

    def done(self, i: int) -> bool:
        """Whether every round of cfg.timesteps has run for prompt i."""
        return self.rounds[i] == len(self.schedule)

    def run_round(self, which: Sequence[int]) -> list[str]:
        """`iterations` Adam steps of the prompts `which`, each at its next round's t, in one batch; then
        their argmax tokens' adversarial prompts."""
        cfg, text = self.cfg, self.bundle.text
        which = list(which)
        counts = torch.tensor([self.x0[i].shape[0] for i in which], device=self.bundle.device)
        x0 = torch.cat([self.x0[i] for i in which])  # (N, C, h, w), N = sum of n_i
        bounds = [0, *counts.cumsum(0).tolist()]
        for _ in range(cfg.iterations):
            one_hot = [_SampleSTE.apply(self.w[i], self.gens[i]) for i in which]  # (k, C) each
            ids = [self.candidates[h.argmax(-1)] for h in one_hot]  # (k,) each
            for i, row in zip(which, ids):
                self.tokens[i].input_ids[0, 1 : 1 + cfg.k] = row
            tokens = Tokens(torch.cat([self.tokens[i].input_ids for i in which]),
                            torch.cat([self.tokens[i].attention_mask for i in which]))  # (P, L)
            embeds = prefix_embeddings(self.full, tokens, torch.stack([h @ self.table for h in one_hot]))
            noise = torch.cat([torch.randn(self.x0[i].shape, generator=self.gens[i]) for i in which]).to(x0)
            t = torch.cat([self._timesteps(i) for i in which]).to(x0.device)  # (N,)
            ctx = context_from_embeddings(text, tokens, embeds).to(self.bundle.dtype)  # (P, L', D)
            pred = unet_pred(self.unet, add_noise(self.bundle.scheduler, x0, noise, t), t,
                             ctx.repeat_interleave(counts, dim=0))
            target = target_for(self.bundle.scheduler, x0, noise, t)
            losses = [mse(pred[a:b], target[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]  # one per prompt
            grads = torch.autograd.grad(torch.stack(losses).sum(), [self.w[i] for i in which])
            for i, grad, loss, row in zip(which, grads, losses, ids):
                self.w[i].grad = grad
                self.opts[i].step()
                with torch.no_grad():
                    self.w[i].copy_(project_simplex(self.w[i]))
                self.losses[i].append(float(loss.detach()))
                self.sampled[i].append(row.tolist())
        for i in which:
            self.rounds[i] += 1
            self.final[i] = self.candidates[self.w[i].detach().argmax(-1)].tolist()  # `argmax_project`
        return [adversarial_prompt(self.bundle, self.prompts[i], self.final[i]) for i in which]

    def top_tokens(self, i: int, n: int) -> list[list[tuple[str, float]]]:
        """Prompt i's relaxed tokens now: per prefix slot, the n candidates of largest simplex weight, as
        (token text, weight), largest first."""
        weights, ids = self.w[i].detach().topk(min(n, self.w[i].shape[1]), dim=-1)  # (k, n) each
        return [[(token_text(self.bundle.text, int(self.candidates[j])), float(v)) for v, j in zip(ws, row)]
                for ws, row in zip(weights.tolist(), ids.tolist())]

    def _timesteps(self, i: int) -> Tensor:
        """Prompt i's timesteps (n_i,) for one step: its round's grid t, or uniform draws from its generator."""
        n = self.x0[i].shape[0]
        if self.cfg.t_schedule == "grid":
            return torch.full((n,), self.schedule[self.rounds[i]], dtype=torch.long)
        return torch.randint(0, self.n_train, (n,), generator=self.gens[i])

    def result(self, i: int) -> PrefixAttackResult:
        """Prompt i's tokens after its last round, and its trace."""
        text, losses = self.bundle.text, self.losses[i]
        adv = adversarial_prompt(self.bundle, self.prompts[i], self.final[i])
        expected = insert_prefix(text, text.tokenize([self.prompts[i]]), self.final[i]).input_ids
        best = min(range(len(losses)), key=losses.__getitem__)
        return PrefixAttackResult(
            token_ids=self.final[i],
            tokens=[token_text(text, j) for j in self.final[i]],
            prompt=adv,
            retokenizes=bool(torch.equal(text.tokenize([adv]).input_ids, expected)),
            losses=losses,
            best_iteration=best,
            best_token_ids=self.sampled[i][best],
            initial_token_ids=self.sampled[i][0],
            rounds=self.rounds[i],
        )


def prefix_attack(
    bundle: ModelBundle,
    prompt: str,
    target_latents: Tensor,
    cfg: PrefixAttackConfig,
    *,
    unet: nn.Module | None = None,
    candidates: Tensor | None = None,
    stop: Callable[[str], bool] | None = None,
) -> PrefixAttackResult:
    """Optimise k prefix tokens so the (erased) model denoises `target_latents` (N, C, h, w) for the prompt.

    `unet` overrides the bundle's (an erased LoRA UNet); `candidates` (C,) reuses `candidate_ids`;
    `stop(adversarial_prompt)` is asked after every round (the released detector check) and ends the attack.
    """
    attack = PrefixAttack(bundle, [prompt], [target_latents], cfg, unet=unet, candidates=candidates)
    while not attack.done(0):
        (adversarial,) = attack.run_round([0])
        if stop is not None and stop(adversarial):
            break
    return attack.result(0)
