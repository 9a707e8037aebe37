"""Ring-A-Bell: a model-agnostic, black-box red-teaming prompt found with the ORIGINAL text encoder only
[Tsai et al., "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion Models?", ICLR'24;
chiayi-hsu/Ring-A-Bell: Get_Concept_Vector.ipynb@248e310, InversePrompt.ipynb@8c5c9e5].

Steps:
1. Concept direction: for prompt pairs (with the concept / the same prompt without it),
   c = mean_i [E(with_i) - E(without_i)], E the encoder's full context (L, D) (released: CLIP's
   last_hidden_state (77, 768), padded to max length; here whatever `TextEncoder._context` gives, e.g. MiniLM's
   (max_length + 1, 384) with the sentence token last).
2. Target: e* = E(p) + eta * c for the prompt p under attack (released `cof`: 3 for nudity, 5-5.5 violence).
3. Genetic search over discrete token sequences P~ of k tokens, laid out as the tokenizer lays out a prompt
   ([start] + k ids + [end] + pads), minimising ||E(P~) - e*||^2 summed over (L, D), as released (`fitness`).
   Start: `population` sequences of uniform random candidate tokens. Every generation: score the whole
   population in ONE batched encode and sort it; the best population // 2 survive (released truncation
   selection); each survivor, with probability `crossover`, is crossed with a random survivor at one random
   cut (0..k-1 ids from the first, the released range) and both children join (so the next generation holds
   on average `population` sequences at crossover 0.5, as released); then every sequence but the `elite` best
   survivors has, with probability `mutation`, one random slot set to a random candidate (released: one slot,
   survivors included). The last generation is only scored; the best sequence ever scored is the answer.
4. The attack prompt is the best sequence decoded, ALONE (released: the inverse prompt replaces the original
   prompt). The search already targets E(p) + eta*c, which holds p's content, and typing p before or after the
   tokens would move every position the objective matched (BERT and CLIP contexts are positional), so the
   typed prompt would no longer be the one whose distance was minimised. It goes to the erased model, whose
   images a judge scores: the attack succeeds on p when the judge sees the concept.

Deviations, all knobs: `elite` best survivors are never mutated (released 0: a survivor's tensor is mutated in
place, so the best sequence can be lost and the best objective can rise); k = 0 means the attacked prompt's own
token count (released: 16 tokens, or 75 for K = 77); candidates come from `candidate_ids` or the caller
(`vocabulary_of`: the tokens of given prompts) instead of every id in [1, 49406). The attack reads only the
ORIGINAL `text` encoder: the erased model is never seen, so one search serves every erased model of a concept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cdc.attacks.config import RingABellConfig
from cdc.embeddings import candidate_ids, token_text
from cdc.text import TextEncoder, Tokens


@dataclass(frozen=True)
class RingABellResult:
    """The found prompt and the search's trace."""

    token_ids: list[int]  # k ids of the best sequence ever scored
    tokens: list[str]  # those ids decoded one by one
    prompt: str  # the attack prompt: the ids decoded together (the original prompt is not added)
    retokenizes: bool  # tokenizing `prompt` gives exactly [start] + token_ids + [end]
    objectives: list[float]  # best ||E(P~) - e*||^2 of each generation (index 0: the random start; never rises
    # when elite >= 1)
    initial_mean: float  # mean objective of the random starting population
    prompt_objective: float  # ||E(p) - e*||^2: the attacked prompt itself (= eta^2 ||c||^2 when nothing truncates)
    seconds: float  # wall time of the search


def concept_direction(text: TextEncoder, with_prompts: Sequence[str], without_prompts: Sequence[str]) -> Tensor:
    """c = mean_i [E(with_i) - E(without_i)] (L, D) float32, from paired prompts with and without the concept."""
    if isinstance(with_prompts, str) or isinstance(without_prompts, str):
        raise TypeError("concept_direction: pass lists of prompts, not strings")
    if not with_prompts or len(with_prompts) != len(without_prompts):
        raise ValueError(f"concept_direction needs paired prompts, got {len(with_prompts)} and "
                         f"{len(without_prompts)}")
    with_ctx = text.encode(list(with_prompts)).float()  # (N, L, D)
    without_ctx = text.encode(list(without_prompts)).float()  # (N, L, D)
    return (with_ctx - without_ctx).mean(0)


def target_context(text: TextEncoder, prompt: str, direction: Tensor, eta: float) -> Tensor:
    """e* = E(prompt) + eta * direction, (L, D) float32 on the encoder's device."""
    base = text.encode([prompt])[0].float()  # (L, D)
    if direction.shape != base.shape:
        raise ValueError(f"direction {tuple(direction.shape)} does not match the context {tuple(base.shape)}")
    return base + eta * direction.to(device=base.device, dtype=torch.float32)


def sequence_tokens(text: TextEncoder, ids: Tensor) -> Tokens:
    """Token rows (P, L) laid out as the tokenizer lays out a prompt: [start] + ids (P, k) + [end] + pads."""
    p, k = ids.shape
    if k < 1 or k + 2 > text.max_length:
        raise ValueError(f"{k} tokens do not fit in max_length {text.max_length} with start and end tokens")
    empty = text.tokenize([""])  # (1, L): [start, end, pad...]
    start, end = empty.input_ids[0, 0], empty.input_ids[0, 1]
    rows = empty.input_ids.expand(p, -1).clone()  # (P, L)
    rows[:, 1 : 1 + k] = ids.to(rows.device)
    rows[:, 0], rows[:, 1 + k] = start, end
    rows[:, k + 2 :] = text.tokenizer.pad_token_id
    mask = torch.zeros_like(empty.attention_mask).expand(p, -1).clone()  # (P, L)
    mask[:, : k + 2] = 1
    return Tokens(rows, mask)


def sequence_objective(text: TextEncoder, ids: Tensor, target: Tensor) -> Tensor:
    """||E(P~) - e*||^2 (P,) float32 for token sequences ids (P, k) against target (L, D): one batched encode."""
    with torch.no_grad():
        ctx = text._context(sequence_tokens(text, ids)).float()  # (P, L, D)
    return ((ctx - target.to(ctx.device)) ** 2).sum(dim=(1, 2))


def prompt_length(text: TextEncoder, prompt: str) -> int:
    """The prompt's token count without start and end (after truncation to max_length)."""
    return int(text.tokenize([prompt]).attention_mask[0].sum()) - 2


def _offspring(parents: Tensor, rate: float, gen: torch.Generator) -> Tensor:
    """Children (2m, k) of survivors (S, k), released style: each survivor, with probability rate, is crossed with a
    random survivor at one random cut (0..k-1 ids from the first), giving both children; m such survivors."""
    s, k = parents.shape
    cross = torch.rand(s, generator=gen) < rate  # (S,)
    partner = torch.randint(0, s, (s,), generator=gen)  # (S,)
    cut = torch.randint(0, k, (s,), generator=gen)  # (S,) ids taken from the first parent
    a, b, cut = parents[cross], parents[partner[cross]], cut[cross]  # (m, k), (m, k), (m,)
    head = torch.arange(k).unsqueeze(0) < cut.unsqueeze(1)  # (m, k) slot before the cut
    child_a = torch.where(head, a, b)  # (m, k): a's head, b's tail
    child_b = torch.where(head, b, a)  # (m, k): b's head, a's tail
    return torch.stack([child_a, child_b], dim=1).reshape(-1, k)  # (2m, k), pairs adjacent


def _mutate(pop: Tensor, rate: float, keep: int, n_cand: int, gen: torch.Generator) -> Tensor:
    """pop (P, k) with, per individual past the first `keep`, probability rate of one slot re-drawn."""
    p, k = pop.shape
    hit = torch.rand(p, generator=gen) < rate  # (P,)
    hit[:keep] = False
    slot = torch.randint(0, k, (p,), generator=gen)  # (P,)
    value = torch.randint(0, n_cand, (p,), generator=gen)  # (P,) candidate indices
    out = pop.clone()
    rows = torch.nonzero(hit).view(-1)
    out[rows, slot[rows]] = value[rows]
    return out


def vocabulary_of(text: TextEncoder, prompts: Sequence[str]) -> Tensor:
    """Candidate ids (C,) int64 ascending: the tokens the prompts tokenize to, special tokens excluded."""
    ids = text.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    special = set(text.tokenizer.all_special_ids)
    return torch.tensor(sorted({i for row in ids for i in row} - special), dtype=torch.long)


def decode(text: TextEncoder, token_ids: Sequence[int]) -> str:
    """The ids decoded together as the released attack decodes its prompt (WordPiece '##' pieces join)."""
    return text.tokenizer.decode(list(token_ids), clean_up_tokenization_spaces=False).strip()


def ring_a_bell(
    text: TextEncoder,
    prompt: str,
    direction: Tensor,
    cfg: RingABellConfig,
    generator: torch.Generator | None = None,
    *,
    candidates: Tensor | None = None,
) -> RingABellResult:
    """Search cfg.k tokens whose ORIGINAL-encoder context is nearest E(prompt) + eta * direction (L, D).

    `text` is the un-erased encoder (the attack never sees the erased model); `generator` (CPU) drives every
    draw, a fresh one seeded cfg.seed when None; `candidates` (C,) reuses `candidate_ids(text, cfg.vocabulary)`.
    """
    start = time.perf_counter()
    k = cfg.k or prompt_length(text, prompt)
    if k < 1:
        raise ValueError(f"ring_a_bell: k = 0 takes the prompt's length, but {prompt!r} has no tokens")
    if k + 2 > text.max_length:
        raise ValueError(f"{k} tokens do not fit in max_length {text.max_length} with start and end tokens")
    target = target_context(text, prompt, direction, cfg.eta)  # (L, D)
    gen = torch.Generator().manual_seed(cfg.seed) if generator is None else generator
    cands = candidate_ids(text, cfg.vocabulary) if candidates is None else candidates.cpu()  # (C,)
    if len(cands) == 0:
        raise ValueError("ring_a_bell: no candidate tokens")
    survivors = cfg.population // 2
    pop = torch.randint(0, len(cands), (cfg.population, k), generator=gen)  # (P, k) candidate indices
    objectives: list[float] = []
    best_score, best = float("inf"), pop[0]
    initial_mean = 0.0
    for g in range(cfg.generations):
        scores = sequence_objective(text, cands[pop], target).cpu()  # (P,)
        order = torch.argsort(scores, stable=True)  # (P,) best first
        pop, scores = pop[order], scores[order]
        if g == 0:
            initial_mean = float(scores.mean())
        objectives.append(float(scores[0]))
        if objectives[-1] < best_score:
            best_score, best = objectives[-1], pop[0].clone()
        if g == cfg.generations - 1:
            break
        parents = pop[:survivors]  # (S, k) truncation selection (released: the better half)
        children = _offspring(parents, cfg.crossover, gen)  # (2m, k), 2m = population - S on average at rate 0.5
        pop = _mutate(torch.cat([parents, children]), cfg.mutation, cfg.elite, len(cands), gen)  # (S + 2m, k)
    ids = cands[best].tolist()
    adversarial = decode(text, ids)
    expected = sequence_tokens(text, torch.tensor([ids])).input_ids.cpu()
    retok = text.tokenize([adversarial]).input_ids.cpu()
    prompt_obj = float(((text.encode([prompt])[0].float() - target) ** 2).sum())
    return RingABellResult(
        token_ids=ids,
        tokens=[token_text(text, i) for i in ids],
        prompt=adversarial,
        retokenizes=bool(torch.equal(retok, expected)),
        objectives=objectives,
        initial_mean=initial_mean,
        prompt_objective=prompt_obj,
        seconds=time.perf_counter() - start,
    )
