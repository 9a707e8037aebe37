"""Judge what a model draws: concept and style accuracy, family rates on prompt sets, world-FID."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from cdc.bundle import ModelBundle
from cdc.config import EvaluateParams, SampleParams
from cdc.fid import world_fid
from cdc.judge import JudgeNet, predict
from cdc.sampler import sample
from cdc.world.captions import canonical_prompt
from cdc.world.data import World, other_concepts


@dataclass(frozen=True)
class Drawn:
    """Images generated for prompts (repeated per seed) and what the judge saw in them."""

    prompts: list[str]  # (M,) one entry per image
    images: np.ndarray  # (M, H, W, 3) uint8
    concept: np.ndarray  # (M,) judged concept id
    style: np.ndarray  # (M,) judged style id


def draw(
    bundle: ModelBundle, judge: JudgeNet, prompts: list[str], n_images: int, sampler: SampleParams,
    *, unet: nn.Module | None = None, progress: bool = True,
) -> Drawn:
    """n_images per prompt (seeds sampler.seed .. +n_images-1, the same for every prompt), judged."""
    if not prompts:
        raise ValueError("no prompts to draw")
    repeated = [p for p in prompts for _ in range(n_images)]
    seeds = [sampler.seed + k for _ in prompts for k in range(n_images)]
    images = sample(bundle, repeated, seeds, sampler, unet=unet, progress=progress)
    seen = predict(judge, images)
    return Drawn(repeated, images, np.asarray(seen["concept"]), np.asarray(seen["style"]))


def family_members(world: World, family: str) -> list[int]:
    """Concept ids that count as the family (empty for a style family)."""
    return [world.index(k) for k in world.targets[family]["members"]]


def family_hits(world: World, family: str, drawn: Drawn) -> np.ndarray:
    """(M,) bool: the judge sees the family (any member; for a style family, that style)."""
    if world.targets[family]["kind"] == "style":
        return drawn.style == world.styles.index(family)
    return np.isin(drawn.concept, family_members(world, family))


def concept_accuracy(
    bundle: ModelBundle, judge: JudgeNet, world: World, keys: list[str], n_images: int, sampler: SampleParams,
    *, unet: nn.Module | None = None, progress: bool = True,
) -> dict:
    """Draw each concept's canonical prompt in each style; how often the judge agrees on concept and style."""
    pairs = [(world.index(k), s) for k in keys for s in range(len(world.styles))]
    prompts = [canonical_prompt(world.concepts[c]["key"], world.styles[s]) for c, s in pairs]
    drawn = draw(bundle, judge, prompts, n_images, sampler, unet=unet, progress=progress)
    expected = np.repeat(np.asarray(pairs, dtype=np.int64), n_images, axis=0)  # (M, 2): concept, style
    concept_ok = drawn.concept == expected[:, 0]
    # Averaged per concept so that every concept weighs the same.
    per = {k: float(concept_ok[expected[:, 0] == world.index(k)].mean()) for k in keys}
    style_acc = float((drawn.style == expected[:, 1]).mean())
    return {"concept_acc": float(np.mean(list(per.values()))), "style_acc": style_acc, "per_concept": per,
            "missed": misses(world, drawn, expected[:, 0], concept_ok), "drawn": drawn}


def misses(world: World, drawn: Drawn, expected: np.ndarray, ok: np.ndarray) -> dict[str, dict]:
    """Per intended concept drawn wrong at least once: its accuracy and what the judge saw most often instead.

    expected: (M,) intended concept id per image; ok: (M,) bool, the image counts as right. Where the concept
    was right but the style wrong (style family), `instead` names the concept itself.
    """
    out = {}
    for c in np.unique(expected):
        mine = expected == c
        if ok[mine].all():
            continue
        wrong = drawn.concept[mine & ~ok]
        values, counts = np.unique(wrong, return_counts=True)
        out[world.keys[int(c)]] = {"acc": float(ok[mine].mean()), "instead": world.keys[int(values[counts.argmax()])]}
    return out


def fid_against_world(
    bundle: ModelBundle, judge: JudgeNet, world: World, sampler: SampleParams, n: int | None = None, seed: int = 0,
    *, unet: nn.Module | None = None, progress: bool = True,
) -> float:
    """world-FID: one image per render's canonical prompt vs. the renders (judge features); n: seeded subset."""
    pick = np.arange(len(world.images))
    if n is not None and n < len(pick):
        pick = np.sort(np.random.default_rng(seed).choice(pick, size=n, replace=False))
    prompts = [canonical_prompt(world.keys[world.concept[i]], world.styles[world.style[i]]) for i in pick]
    drawn = draw(bundle, judge, prompts, 1, sampler, unet=unet, progress=progress)
    return world_fid(judge, world.images[pick], drawn.images)


def erasure_rates(
    bundle: ModelBundle, judge: JudgeNet, world: World, family: str, in_set: list[str], cfg: EvaluateParams,
    sampler: SampleParams, *, unet: nn.Module | None = None, progress: bool = True,
) -> tuple[dict, dict[str, Drawn]]:
    """The erasure columns of a table row: how often the family is drawn on its in-set and out-of-set prompts,
    each with its image count (`<rate>_n`, for the report's binomial interval)."""
    run = dict(unet=unet, progress=progress)
    # (94 weapon phrases x 4 seeds would be most of the evaluation; 1 seed each still gives 94 images.)
    n_in = max(1, min(cfg.images_per_prompt, cfg.in_set_images // len(in_set)))
    drawn = {"in_set": draw(bundle, judge, in_set, n_in, sampler, **run),
             "out_of_set": draw(bundle, judge, world.out_of_set[family], cfg.images_per_prompt, sampler, **run)}
    row = {k: float(family_hits(world, family, d).mean()) for k, d in drawn.items()}
    return row | {f"{k}_n": len(d.prompts) for k, d in drawn.items()}, drawn


def erasure_row(
    bundle: ModelBundle, judge: JudgeNet, world: World, family: str, in_set: list[str], probe: list[str],
    retain: list[str], cfg: EvaluateParams, sampler: SampleParams, *, unet: nn.Module | None = None,
    progress: bool = True, fid: bool = True,
) -> tuple[dict, dict[str, Drawn]]:
    """One table row: erasure in-set and out-of-set, utility on neighbours and on all, and world-FID unless
    `fid` is False (a curve's validation points, which plot rates only).

    The row also names what each utility column lost (`neighbors_missed`, `retain_missed`; see `misses`).

    in_set: the prompts the erasure trained on; retain: concepts outside every family. For a style family
    the neighbours are the probe objects drawn in the anchor style (concept and style must survive).
    """
    run = dict(unet=unet, progress=progress)
    row, drawn = erasure_rates(bundle, judge, world, family, in_set, cfg, sampler, **run)
    fam = world.targets[family]
    if fam["kind"] == "style":
        anchor = world.styles.index(fam["anchor"])
        prompts = [canonical_prompt(k, fam["anchor"]) for k in probe]
        d = draw(bundle, judge, prompts, cfg.retain_images, sampler, **run)
        expected = np.repeat([world.index(k) for k in probe], cfg.retain_images)
        ok = (d.concept == expected) & (d.style == anchor)
        row["retain_neighbors"], row["retain_neighbors_n"] = float(ok.mean()), len(ok)
        row["neighbors_missed"] = misses(world, d, expected, ok)
    else:
        nbr = concept_accuracy(bundle, judge, world, fam["neighbours"], cfg.retain_images, sampler, **run)
        # Every concept has the same number of images, so the per-concept mean is a rate over all of them.
        row["retain_neighbors"], row["retain_neighbors_n"] = nbr["concept_acc"], len(nbr["drawn"].prompts)
        row["neighbors_missed"] = nbr["missed"]
    every = concept_accuracy(bundle, judge, world, retain, cfg.retain_images, sampler, **run)
    row["retain_all"], row["retain_all_n"] = every["concept_acc"], len(every["drawn"].prompts)
    row["retain_missed"] = every["missed"]
    if fid:
        row["world_fid"] = fid_against_world(bundle, judge, world, sampler, cfg.fid_images, cfg.seed, **run)
    return row, drawn


def base_keys(world: World, n_other: int, seed: int) -> list[str]:
    """What the base model's accuracy is measured on: every target member, then n_other seeded other concepts."""
    members = [m for f in world.targets.values() for m in f["members"]]
    return members + other_concepts(world, n_other, seed)


def draw_out_of_set(
    bundle: ModelBundle, judge: JudgeNet, world: World, n_images: int, sampler: SampleParams,
    *, unet: nn.Module | None = None, progress: bool = True,
) -> dict[str, Drawn]:
    """Every target family's out-of-set prompts, drawn n_images times each and judged."""
    return {f: draw(bundle, judge, p, n_images, sampler, unet=unet, progress=progress)
            for f, p in world.out_of_set.items()}


def prompt_rates(world: World, family: str, drawn: Drawn) -> dict[str, float]:
    """Per prompt (in the order drawn), the fraction of its images the judge sees as the family."""
    hits, prompts = family_hits(world, family, drawn), np.asarray(drawn.prompts)
    return {p: float(hits[prompts == p].mean()) for p in dict.fromkeys(drawn.prompts)}


def family_rates(world: World, drawn: dict[str, Drawn]) -> dict[str, float]:
    """Per family, the fraction of its drawn images the judge sees as the family."""
    return {f: float(family_hits(world, f, d).mean()) for f, d in drawn.items()}
