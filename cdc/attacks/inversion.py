"""Concept inversion (CCE): textual inversion of ONE new token against the erased model, then generation with it
[Pham et al., "Circumventing Concept Erasure Methods for Text-to-Image Generative Models", ICLR'24;
NYU-DICE-Lab/circumventing-concept-erasure@6d23790: esd/concept_inversion.py, esd/train.sh].

As released (diffusers' textual_inversion.py pointed at the erased model): a placeholder token is added to the
tokenizer, its embedding row starts as a copy of a single-token initializer word (`--initializer_token`, the
concept word), and only that row is trained; every other row is restored after each step, the UNet, VAE and
the rest of the text encoder are frozen. Each training example is one of the base model's images of the concept
with a random template prompt holding the placeholder ("a photo of a {}", ...), fresh noise and t ~ U{0..T-1};
the loss is the plain denoising MSE (eps or v target) of the ERASED UNet, conditioned through the erased
model's text encoder. Optimiser: AdamW (betas 0.9/0.999, eps 1e-8, weight decay 1e-2), constant lr
5e-3 x 4 (batch) x 4 (accumulation) = 0.08 (`--scale_lr`), 5000 updates of 16 examples, 25 training images.

Here: nothing is added to the tokenizer or the embedding table (the bundle is shared). The placeholder "{}"
of a prompt becomes one token slot whose word embedding is the learned vector, spliced in through
`context_from_embeddings` (the released table-row-plus-restore is the same thing: AdamW is elementwise, so
training the row alone gives the same updates). One step = one batch of `batch_size` examples (the released
effective batch of 16 is batch_size 16, no accumulation). Not carried over: the random horizontal flip of the
training images (latents come from the codec here, and a space-to-depth latent does not flip like its image),
and the text encoder's train mode (CLIP has no dropout; MiniLM's would add noise), so encoders stay in eval.
Generation: `cdc.sampler.sample` on the contexts that hold the learned token (same seeding, same noise draws).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cdc.attacks.config import PLACEHOLDER, RANDOM_INIT, InversionConfig, check_template
from cdc.bundle import ModelBundle
from cdc.config import SampleParams
from cdc.embeddings import context_from_embeddings, token_table
from cdc.losses import add_noise, mse, noisy_latents, target_for, unet_pred
from cdc.sampler import sample
from cdc.text import TextEncoder, Tokens


@dataclass(frozen=True)
class InversionResult:
    """The learned token and its trace."""

    embedding: Tensor  # (D_tok,) float32 on CPU: the learned word embedding of the placeholder
    init_embedding: Tensor  # (D_tok,) float32 on CPU: where it started (the init word's row, or the random draw)
    init_token: str
    templates: tuple[str, ...]  # the templates it was trained with
    losses: list[float]  # training loss of every step (that step's batch, noise and t)


def placeholder_tokens(text: TextEncoder, prompts: Sequence[str], slot_id: int) -> tuple[Tokens, Tensor]:
    """Tokens (B, L) of prompts whose "{}" is one token slot holding `slot_id`, and the slot positions (B,).

    Left and right of the placeholder are tokenized apart and joined as start + left + slot + right + end,
    padded with the tokenizer's pad id: for a single-token word w this equals tokenizing `fill(prompt, w)`
    with slot_id = w's id (both BERT WordPiece and CLIP BPE split words at spaces first); the slot is always a
    word of its own ("{}s" is the slot, then "s"). A prompt longer than
    max_length loses tokens at its end, as the tokenizer truncates; the slot itself must fit.
    """
    tok, length = text.tokenizer, text.max_length
    start, *_, end = tok("", add_special_tokens=True)["input_ids"]  # [CLS]/[SOT], [SEP]/[EOT]
    pad = tok.pad_token_id
    rows, masks, slots = [], [], []
    for prompt in prompts:
        check_template(prompt)
        left, right = prompt.split(PLACEHOLDER)
        ids_l = tok(left.strip(), add_special_tokens=False)["input_ids"] if left.strip() else []
        ids_r = tok(right.strip(), add_special_tokens=False)["input_ids"] if right.strip() else []
        if len(ids_l) + 3 > length:
            raise ValueError(f"the placeholder of {prompt!r} falls beyond max_length {length}")
        content = [*ids_l, slot_id, *ids_r][: length - 2]
        row = [start, *content, end]
        rows.append(row + [pad] * (length - len(row)))
        masks.append([1] * len(row) + [0] * (length - len(row)))
        slots.append(1 + len(ids_l))
    device = text.device
    tokens = Tokens(torch.tensor(rows, dtype=torch.long, device=device),
                    torch.tensor(masks, dtype=torch.long, device=device))
    return tokens, torch.tensor(slots, dtype=torch.long, device=device)


def placeholder_embeddings(table: Tensor, tokens: Tokens, slots: Tensor, embedding: Tensor) -> Tensor:
    """Word embeddings (B, L, D_tok): table rows of `tokens`, each row's slot (B,) set to `embedding` (D_tok,).

    Gradients flow to `embedding` only (the table is detached).
    """
    base = table[tokens.input_ids]  # (B, L, D_tok)
    at_slot = torch.zeros(tokens.input_ids.shape, dtype=torch.bool, device=base.device)  # (B, L)
    at_slot[torch.arange(len(slots), device=base.device), slots.to(base.device)] = True
    return torch.where(at_slot.unsqueeze(-1), embedding.to(device=base.device, dtype=base.dtype), base)


def neutral_id(text: TextEncoder) -> int:
    """The id a slot holds: never looked up (the hook replaces the whole lookup), so the unknown id, else pad."""
    tok = text.tokenizer
    return int(tok.unk_token_id if tok.unk_token_id is not None else tok.pad_token_id)


def init_id(text: TextEncoder, word: str) -> int:
    """The single token id of an init word; raises when the word is several tokens (as released)."""
    ids = text.tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:  # released: "The initializer token must be a single token."
        raise ValueError(f"init_token {word!r} is {len(ids)} tokens; use a one-token word or {RANDOM_INIT!r}")
    return int(ids[0])


def initial_embedding(text: TextEncoder, init_token: str, generator: torch.Generator) -> Tensor:
    """Start vector (D_tok,) float32 on CPU: the init word's row, or a Gaussian with the table's per-dim mean/std."""
    table = token_table(text).float().cpu()  # (V, D_tok)
    if init_token == RANDOM_INIT:
        noise = torch.randn(table.shape[1], generator=generator)
        return table.mean(0) + table.std(0) * noise
    return table[init_id(text, init_token)].clone()


def placeholder_context(text: TextEncoder, prompts: Sequence[str], embedding: Tensor) -> Tensor:
    """Context (B, L', D) of prompts with "{}" given the word embedding `embedding` (D_tok,); carries its grad."""
    tokens, slots = placeholder_tokens(text, prompts, neutral_id(text))
    embeds = placeholder_embeddings(token_table(text), tokens, slots, embedding.to(text.device))
    return context_from_embeddings(text, tokens, embeds)


def inversion_loss(bundle: ModelBundle, embedding: Tensor, latents: Tensor, templates: Sequence[str],
                   draws: Sequence[tuple[Tensor, Tensor]], *, unet: nn.Module | None = None) -> float:
    """Mean denoising MSE over fixed (noise (N, C, h, w), t (N,)) draws of all latents (N, C, h, w), no gradient.

    Latent i is paired with templates[i % len(templates)].
    """
    unet = bundle.unet if unet is None else unet
    x0 = latents.to(device=bundle.device, dtype=bundle.dtype)
    prompts = [templates[i % len(templates)] for i in range(x0.shape[0])]
    with torch.no_grad():
        ctx = placeholder_context(bundle.text, prompts, embedding)
        ctx = ctx.to(device=bundle.device, dtype=bundle.dtype)  # (N, L', D)
        losses = []
        for noise, t in draws:
            noise, t = noise.to(x0), t.to(x0.device)
            pred = unet_pred(unet, add_noise(bundle.scheduler, x0, noise, t), t, ctx)
            losses.append(mse(pred, target_for(bundle.scheduler, x0, noise, t)))
    return float(torch.stack(losses).mean())


def invert_concept(
    bundle: ModelBundle,
    latents: Tensor,
    cfg: InversionConfig,
    start: str,
    *,
    unet: nn.Module | None = None,
    templates: Sequence[str] | None = None,
) -> InversionResult:
    """Learn one token embedding, from `start` (a one-token word, or "random"; one of cfg.starts when run as the
    attack stage runs it), so the (erased) model denoises `latents` (N, C, h, w) for prompts holding it.

    `bundle` is the ERASED model (its text encoder is the one attacked); `unet` overrides its UNet (the erased
    LoRA UNet); `templates` overrides cfg.templates. Nothing of the bundle changes: the UNet and the text
    encoder are only read (gradients are taken with respect to the new vector alone).
    """
    templates = tuple(cfg.templates if templates is None else templates)
    if not templates:
        raise ValueError("invert_concept: no templates")
    for t in templates:
        check_template(t)
    if latents.ndim != 4 or latents.shape[0] == 0:
        raise ValueError(f"latents must be (N, C, h, w) with N >= 1, got {tuple(latents.shape)}")
    text, unet = bundle.text, bundle.unet if unet is None else unet
    gen = torch.Generator().manual_seed(cfg.seed)
    init = initial_embedding(text, start, gen)  # (D_tok,)
    vec = init.clone().to(text.device).requires_grad_(True)
    opt = torch.optim.AdamW([vec], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    table = token_table(text)  # (V, D_tok)
    tokens, slots = placeholder_tokens(text, templates, neutral_id(text))  # (T, L), (T,)
    x_all = latents.to(device=bundle.device, dtype=bundle.dtype)  # (N, C, h, w)
    n = x_all.shape[0]
    order = torch.empty(0, dtype=torch.long)
    losses: list[float] = []
    for _ in range(cfg.steps):
        while len(order) < cfg.batch_size:  # shuffled epochs over the images, as the released DataLoader
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        which = torch.randint(0, len(templates), (cfg.batch_size,), generator=gen)  # random.choice(templates)
        x0 = x_all[idx.to(x_all.device)]  # (B, C, h, w)
        x_t, noise, t = noisy_latents(bundle.scheduler, x0, gen)
        batch = Tokens(tokens.input_ids[which.to(text.device)], tokens.attention_mask[which.to(text.device)])
        embeds = placeholder_embeddings(table, batch, slots[which.to(text.device)], vec)  # (B, L, D_tok)
        ctx = context_from_embeddings(text, batch, embeds).to(device=bundle.device, dtype=bundle.dtype)
        loss = mse(unet_pred(unet, x_t, t, ctx), target_for(bundle.scheduler, x0, noise, t))
        (grad,) = torch.autograd.grad(loss, [vec])
        vec.grad = grad
        opt.step()
        losses.append(float(loss.detach()))
    return InversionResult(
        embedding=vec.detach().float().cpu(),
        init_embedding=init,
        init_token=start,
        templates=templates,
        losses=losses,
    )


def sample_with_embedding(
    bundle: ModelBundle,
    prompts: Sequence[str],
    embedding: Tensor,
    seeds: Sequence[int],
    cfg: SampleParams,
    *,
    unet: nn.Module | None = None,
) -> np.ndarray:
    """Images uint8 (B, H, W, 3) for prompts whose "{}" is the learned token `embedding` (D_tok,), one seed each."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("sample_with_embedding: need a non-empty list of prompts")
    with torch.no_grad():
        contexts = placeholder_context(bundle.text, list(prompts), embedding)
    return sample(bundle, contexts, seeds, cfg, unet=unet, progress=False)
