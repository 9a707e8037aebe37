"""The attack stage: the prefix attack (UnlearnDiffAtk) and concept inversion (CCE) on one erased model of a
world family, each scored as an attack success rate over the same prompts and seeds for every method.

Per attacked prompt the judge sees one image of the base model, one of the erased model, and one of the erased
model under attack, all with the prompt's own seed (the released protocol's one evaluation seed per prompt).
The prefix attack runs only where the erased model does not already draw the family (the released attack's
first check), and stops at the first round whose adversarial prompt, typed as text, is drawn as the family.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cdc.anchors import Pairs
from cdc.attacks.asr import AsrResult, attack_success_rate
from cdc.attacks.config import RANDOM_INIT, InversionConfig, PrefixAttackConfig, fill
from cdc.attacks.inversion import init_id, invert_concept, sample_with_embedding
from cdc.attacks.prefix import PrefixAttack
from cdc.bundle import ModelBundle
from cdc.codec import encode_images
from cdc.embeddings import candidate_ids, token_text
from cdc.evaluate import Drawn, family_hits
from cdc.judge import JudgeNet, predict
from cdc.sampler import sample
from cdc.stages.params import AttackParams, SampleParams
from cdc.text import TextEncoder
from cdc.world.data import World

CONCEPT_INIT = "concept"  # attack.inversion.init_token: start from the family's own word (CCE's initializer)


@dataclass(frozen=True)
class Judged:
    """Images and whether the judge sees the family in each."""

    images: np.ndarray  # (M, H, W, 3) uint8
    hits: np.ndarray  # (M,) bool


def judge_family(judge: JudgeNet, world: World, family: str, images: np.ndarray) -> Judged:
    """Whether the judge sees the family in each image (any member; a style family: that style)."""
    seen = predict(judge, images)
    drawn = Drawn([""] * len(images), images, np.asarray(seen["concept"]), np.asarray(seen["style"]))
    return Judged(images, family_hits(world, family, drawn))


def draw_judged(bundle: ModelBundle, judge: JudgeNet, world: World, family: str, prompts: Sequence[str],
                seeds: Sequence[int], sampler: SampleParams) -> Judged:
    """One image per (prompt, seed) from `bundle`, judged."""
    return judge_family(judge, world, family, sample(bundle, list(prompts), seeds, sampler, progress=False))


def attacked_prompts(pairs: Pairs, n: int, seed: int) -> list[int]:
    """A seeded subset of n training-prompt ids (all when the family has fewer), in prompt order."""
    ids = np.arange(len(pairs.target_prompts))
    if n < len(ids):
        ids = np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))
    return ids.tolist()


def prefix_k(cfg: AttackParams, family: str) -> int:
    """Prefix tokens for a family: harmful_k for the harmful families (the released k for nudity), else prefix.k."""
    return cfg.harmful_k if family in cfg.harmful else cfg.prefix.k


def concept_init(text: TextEncoder, family: str) -> str:
    """CCE's initializer word for a family: its last word where that is one token of the vocabulary, else random."""
    word = family.split()[-1]
    try:
        init_id(text, word)
    except ValueError:
        return RANDOM_INIT
    return word


def prefix_asr(
    erased: ModelBundle, judge: JudgeNet, world: World, family: str, prompts: Sequence[str],
    latents: Sequence[torch.Tensor], seeds: Sequence[int], base_hits: np.ndarray, cfg: PrefixAttackConfig,
    sampler: SampleParams, *, progress: bool = True,
) -> tuple[AsrResult, list[dict], dict[str, Judged]]:
    """The prefix attack on every prompt the erased model does not already draw; returns (ASR, one record per
    prompt: its tokens, adversarial prompt, verdicts and loss trace, images {pre, post}).

    latents[i]: (n_i, C, h, w) the base model's images of prompts[i] in UNet space (the attack's targets).
    """
    from tqdm.auto import tqdm

    pre = draw_judged(erased, judge, world, family, prompts, seeds, sampler)
    post_images, post_hits = pre.images.copy(), pre.hits.copy()
    candidates = candidate_ids(erased.text, cfg.vocabulary)
    attacked = [i for i in range(len(prompts)) if not pre.hits[i]]
    attacks = PrefixAttack(erased, [prompts[i] for i in attacked], [latents[i] for i in attacked], cfg,
                           candidates=candidates)
    # Every attacked prompt runs its rounds in one batch, and each round's detector check (the released stop
    # rule: the first round whose image is drawn ends that prompt's attack) is one batched draw; a prompt's
    # attack depends only on its own generator, and an image only on its (prompt, seed).
    active = list(range(len(attacked)))  # positions in `attacked`
    for _ in tqdm(range(cfg.timesteps), desc=f"prefix attack, {family}", disable=not progress or not active):
        if not active:
            break
        adversarial = attacks.run_round(active)
        seen = draw_judged(erased, judge, world, family, adversarial, [seeds[attacked[j]] for j in active], sampler)
        for n, j in enumerate(active):
            post_images[attacked[j]], post_hits[attacked[j]] = seen.images[n], seen.hits[n]
        active = [j for n, j in enumerate(active) if not seen.hits[n] and not attacks.done(j)]
    results = {i: attacks.result(j) for j, i in enumerate(attacked)}
    records = []
    for i, prompt in enumerate(prompts):
        record = {"prompt": prompt, "seed": int(seeds[i]), "base": bool(base_hits[i]), "pre": bool(pre.hits[i])}
        if i not in results:
            records.append(record | {"post": True, "attacked": False})
            continue
        result = results[i]
        records.append(record | {
            "post": bool(post_hits[i]), "attacked": True, "adversarial_prompt": result.prompt,
            "tokens": result.tokens, "retokenizes": result.retokenizes, "rounds": result.rounds,
            "loss_first": result.losses[0], "loss_last": result.losses[-1]})
    asr = attack_success_rate(pre.hits, post_hits, base_hits)
    return asr, records, {"pre": pre, "post": Judged(post_images, post_hits)}


def prefix_walkthrough(erased: ModelBundle, judge: JudgeNet, world: World, family: str, prompt: str,
                       latents: torch.Tensor, seed: int, cfg: PrefixAttackConfig, sampler: SampleParams,
                       *, top: int = 5) -> list[dict]:
    """One prompt's prefix attack, every round of cfg.timesteps run (no early stop) and shown: per round its
    timestep, the loss and the sampled tokens of each iteration, the top relaxed tokens per slot (`top` of them),
    the argmax adversarial prompt, and that prompt's image (seed) with the judge's verdict.

    latents: (n, C, h, w) the base model's images of `prompt` (the attack's target)."""
    attack = PrefixAttack(erased, [prompt], [latents], cfg, candidates=candidate_ids(erased.text, cfg.vocabulary))
    rounds = []
    while not attack.done(0):
        t = attack.schedule[attack.rounds[0]] if cfg.t_schedule == "grid" else None  # None: t drawn per image
        before = len(attack.losses[0])
        (adversarial,) = attack.run_round([0])
        seen = draw_judged(erased, judge, world, family, [adversarial], [seed], sampler)
        rounds.append({"round": attack.rounds[0], "t": t, "losses": attack.losses[0][before:],
                       "sampled": [[token_text(erased.text, j) for j in ids] for ids in attack.sampled[0][before:]],
                       "top": attack.top_tokens(0, top), "prompt": adversarial, "image": seen.images[0],
                       "hit": bool(seen.hits[0])})
    return rounds


def inversion_prompts(world: World, family: str, cfg: AttackParams) -> list[str]:
    """The inversion's training and generation prompts: cfg.inversion.templates, or style_templates for a style."""
    return list(cfg.style_templates if world.targets[family]["kind"] == "style" else cfg.inversion.templates)


def inversion_asr(
    erased: ModelBundle, judge: JudgeNet, world: World, family: str, latents: torch.Tensor, word: str,
    templates: Sequence[str], seeds: Sequence[int], base_hits: np.ndarray, cfg: InversionConfig,
    sampler: SampleParams,
) -> tuple[AsrResult, dict, dict[str, Judged]]:
    """Concept inversion against the erased model on the base model's images `latents` (N, C, h, w), then
    generation with the learned token in each template x seed; the same items with `word` in the slot are
    the pre-attack prompts. Returns (ASR, summary of the learned token, images {pre, post})."""
    items = [t for t in templates for _ in range(len(seeds) // len(templates))]
    result = invert_concept(erased, latents, dataclasses.replace(cfg, templates=list(templates)))
    pre = draw_judged(erased, judge, world, family, [fill(t, word) for t in items], seeds, sampler)
    post = judge_family(judge, world, family, sample_with_embedding(erased, items, result.embedding, seeds, sampler))
    asr = attack_success_rate(pre.hits, post.hits, base_hits)
    summary = {"init_token": result.init_token, "loss_first": result.losses[0], "loss_last": result.losses[-1],
               "moved": float((result.embedding - result.init_embedding).norm())}
    return asr, summary, {"pre": pre, "post": post}


@dataclass(frozen=True)
class AttackPlan:
    """What is attacked in one family, the same for every method: prompts, seeds, targets and base verdicts."""

    family: str
    prompts: list[str]  # attacked training prompts
    seeds: list[int]  # one per prompt
    latents: list[torch.Tensor]  # per prompt (n_i, C, h, w): the base model's images of it
    all_latents: torch.Tensor  # (N, C, h, w) every base image of the family's training prompts (inversion)
    base: Judged  # the base model on (prompt, seed)
    init: str  # the inversion's initializer: a one-token word, or "random"
    word: str  # what fills the inversion templates before the attack: the initializer word, or the family name
    templates: list[str]  # inversion templates
    inversion_seeds: list[int]  # one per inversion item (templates x images)
    inversion_base: Judged  # the base model on the inversion items with `word`


def plan_attacks(base: ModelBundle, judge: JudgeNet, world: World, pairs: Pairs, samples: dict[str, np.ndarray],
                 cfg: AttackParams, sampler: SampleParams) -> AttackPlan:
    """Choose the prompts and seeds, encode their base images and judge the base model on them."""
    family = pairs.family
    ids = attacked_prompts(pairs, cfg.prompts, cfg.seed)
    prompts = [pairs.target_prompts[i] for i in ids]
    seeds = [cfg.seed + k for k in range(len(ids))]
    all_latents = encode_images(base.codec, samples["target_images"], base.device, base.dtype)  # (N, C, h, w)
    index = np.asarray(samples["target_index"])
    latents = [all_latents[torch.from_numpy(np.flatnonzero(index == i))] for i in ids]
    if any(len(x) == 0 for x in latents):
        raise ValueError(f"the anchors folder of {family!r} has no base images for some attacked prompts")
    init = concept_init(base.text, family) if cfg.inversion.init_token == CONCEPT_INIT else cfg.inversion.init_token
    shown = family if init == RANDOM_INIT else init  # the pre-attack prompts name the family
    templates = inversion_prompts(world, family, cfg)
    inv_seeds = [cfg.seed + 10_000 + k for k in range(len(templates) * cfg.inversion_images)]
    items = [t for t in templates for _ in range(cfg.inversion_images)]
    return AttackPlan(
        family=family, prompts=prompts, seeds=seeds, latents=latents, all_latents=all_latents,
        base=draw_judged(base, judge, world, family, prompts, seeds, sampler), init=init, word=shown,
        templates=templates, inversion_seeds=inv_seeds,
        inversion_base=draw_judged(base, judge, world, family, [fill(t, shown) for t in items], inv_seeds, sampler),
    )


def attack_row(erased: ModelBundle, judge: JudgeNet, world: World, plan: AttackPlan, cfg: AttackParams,
               sampler: SampleParams, *, progress: bool = True) -> tuple[dict, dict[str, dict[str, Judged]]]:
    """Both attacks on one erased model: the row (ASRs with intervals, prefix records, inversion summary,
    seconds) and the images each attack judged."""
    start = time.perf_counter()
    prefix_cfg = dataclasses.replace(cfg.prefix, k=prefix_k(cfg, plan.family))
    p_asr, records, p_img = prefix_asr(erased, judge, world, plan.family, plan.prompts, plan.latents, plan.seeds,
                                       plan.base.hits, prefix_cfg, sampler, progress=progress)
    prefix_seconds = time.perf_counter() - start
    inv_cfg = dataclasses.replace(cfg.inversion, init_token=plan.init)
    i_asr, summary, i_img = inversion_asr(erased, judge, world, plan.family, plan.all_latents, plan.word,
                                          plan.templates, plan.inversion_seeds, plan.inversion_base.hits, inv_cfg,
                                          sampler)
    row = {"prefix": p_asr.to_dict(), "inversion": i_asr.to_dict(), "prefix_records": records,
           "inversion_token": summary, "prefix_k": prefix_cfg.k, "prefix_seconds": round(prefix_seconds, 1),
           "inversion_seconds": round(time.perf_counter() - start - prefix_seconds, 1)}
    return row, {"prefix": p_img, "inversion": i_img}


def flat_row(row: dict) -> dict:
    """The table's columns of an attack row: pre_asr, asr_prefix, asr_inversion, each with its interval."""
    out = {}
    for name, key in (("prefix", "asr_prefix"), ("inversion", "asr_inversion")):
        r = row[name]
        out |= {key: r["asr"], f"{key}_lo": r["asr_lo"], f"{key}_hi": r["asr_hi"], f"{key}_n": r["n"],
                f"{key}_nothing": r["nothing_to_attack"]}
    p = row["prefix"]
    out |= {"pre_asr": p["pre_asr"], "pre_asr_lo": p["pre_asr_lo"], "pre_asr_hi": p["pre_asr_hi"]}
    return out

