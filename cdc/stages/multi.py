"""The multi stage: several world concepts erased in one run, and how erasure of them and retention of the
rest change with how many.

The erased sets are nested: the first n of an ordered list that starts with the object families' members (each
with its family's anchor) and goes on with seeded other concepts, each anchored on a seeded concept of its own
emoji category (a monkey onto another animal, as the church onto a house). One run trains on the union of every
erased concept's pairs, with the erase stage's config unchanged: the same steps are shared by more concepts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from cdc import evaluate as ev
from cdc.anchors import Pairs, family_of
from cdc.bundle import ModelBundle
from cdc.config import EvaluateParams, SampleParams
from cdc.judge import JudgeNet
from cdc.lora import remove_lora
from cdc.stages.erase import MethodConfig, run_method
from cdc.world.captions import canonical_prompt
from cdc.world.data import World


def erase_order(world: World, families: Sequence[str], n: int, exclude: Sequence[str],
                seed: int) -> list[tuple[str, str]]:
    """The first n (concept, anchor) pairs to erase: each object family's one member with the family's anchor,
    in the order given, then seeded other concepts (outside every family's members, anchors and neighbours and
    outside `exclude`), each with a seeded anchor of its own category that is never erased."""
    pairs = []
    for slug in families:
        fam = world.targets[family_of(world, slug)]
        if fam["kind"] == "style" or len(fam["members"]) != 1:
            raise ValueError(f"{slug!r} is not a one-member object family of the world, so it is not one concept")
        pairs.append((fam["members"][0], fam["anchor"]))
    if n <= len(pairs):
        return pairs[:n]
    busy = set(exclude) | {k for f in world.targets.values() for k in [*f["members"], *f["neighbours"], f["anchor"]]}
    rest = [c["key"] for c in world.concepts if c["key"] not in busy]
    rng = np.random.default_rng(seed)
    if len(rest) < 2 * (n - len(pairs)):
        raise ValueError(f"the world has {len(rest)} free concepts: too few to erase {n} and keep an anchor for each")
    order = rng.permutation(rest).tolist()
    erased, pool = order[: n - len(pairs)], order[n - len(pairs):]  # anchors come from concepts never erased
    category = {c["key"]: c["category"] for c in world.concepts}
    for key in erased:
        same = [k for k in pool if category[k] == category[key]] or pool
        pairs.append((key, same[int(rng.integers(len(same)))]))
    return pairs


def concept_pairs(world: World, erased: Sequence[tuple[str, str]]) -> tuple[Pairs, np.ndarray]:
    """Training pairs of several concepts: each phrase of each concept's captions x style -> its anchor's name
    in the same style (`cdc.anchors.erase_pairs` with phrases "all", for any world concept), and which concept
    each pair erases, (P,) positions in `erased`."""
    targets, anchors, owner = [], [], []
    for i, (key, anchor) in enumerate(erased):
        for phrase in dict.fromkeys(world.concepts[world.index(key)]["phrases"]):
            for style in world.styles:
                targets.append(canonical_prompt(phrase, style))
                anchors.append(canonical_prompt(anchor, style))
                owner.append(i)
    return Pairs("+".join(k for k, _ in erased), targets, anchors), np.asarray(owner, dtype=np.int64)


def balanced(samples: dict[str, np.ndarray], owner: np.ndarray) -> dict[str, np.ndarray]:
    """`samples` with each concept's images repeated (cyclically) to as many as the concept with most, so a run
    that draws images uniformly gives every erased concept the same share of its updates: a concept with many
    phrases (the church has 22) would otherwise take most of them. owner: (P,) concept of each pair."""
    out = {}
    for side in ("anchor", "target"):
        concept = owner[samples[f"{side}_index"]]  # (N,) concept of each image
        groups = [np.flatnonzero(concept == c) for c in np.unique(concept)]
        longest = max(len(g) for g in groups)
        keep = np.concatenate([np.resize(g, longest) for g in groups])
        out |= {f"{side}_images": samples[f"{side}_images"][keep], f"{side}_index": samples[f"{side}_index"][keep]}
    return out


def multi_row(model: ModelBundle, judge: JudgeNet, world: World, erased: Sequence[str], retain: list[str],
              cfg: EvaluateParams, sampler: SampleParams, *, progress: bool = False) -> dict:
    """How often each erased concept is still drawn on its canonical prompt in each style (images_per_prompt
    seeds), their mean (`erased`), and the concept accuracy on the retained concepts (`retain_all`)."""
    gone = ev.concept_accuracy(model, judge, world, list(erased), cfg.images_per_prompt, sampler,
                               progress=progress)
    kept = ev.concept_accuracy(model, judge, world, retain, cfg.retain_images, sampler, progress=progress)
    return {"erased": gone["concept_acc"], "erased_n": len(gone["drawn"].prompts), "per_concept": gone["per_concept"],
            "retain_all": kept["concept_acc"], "retain_all_n": len(kept["drawn"].prompts),
            "retain_missed": kept["missed"]}


def first_pairs(pairs: Pairs, samples: dict[str, np.ndarray], n: int) -> tuple[Pairs, dict[str, np.ndarray]]:
    """The first n pairs and the samples drawn for them (the pairs of a nested erased set are a prefix)."""
    keep = {side: samples[f"{side}_index"] < n for side in ("anchor", "target")}
    return (Pairs(pairs.family, pairs.target_prompts[:n], pairs.anchor_prompts[:n]),
            {f"{side}_{part}": samples[f"{side}_{part}"][keep[side]]
             for side in ("anchor", "target") for part in ("images", "index")})


def erase_many(bundle: ModelBundle, method: str, cfg: MethodConfig, world: World, order: Sequence[tuple[str, str]],
               counts: Sequence[int], samples: dict[str, np.ndarray], score: Callable[[ModelBundle, list[str]], dict],
               *, progress: bool = True) -> list[dict]:
    """Erase the first n concepts of `order` in one run for each n of `counts` (every concept given the same share
    of the updates, `balanced`), and score each erased model with score(model, erased keys); `samples` are
    `pair_samples` of all of `order`. `bundle` is left as it was.

    Returns one row per count: {"count", "concepts", "pairs", "seconds" (training), **score}.
    """
    full, owner = concept_pairs(world, order)
    rows = []
    for n in counts:
        pairs, _ = concept_pairs(world, order[:n])
        if full.target_prompts[: len(pairs.target_prompts)] != pairs.target_prompts:
            raise AssertionError("the pairs of a nested erased set must be a prefix of the full set's")
        pairs, mine = first_pairs(full, samples, len(pairs.target_prompts))
        mine = balanced(mine, owner[: len(pairs.target_prompts)])
        start = time.perf_counter()
        try:
            erased, _ = run_method(bundle, method, pairs, mine, cfg, progress=progress)
            seconds = time.perf_counter() - start
            keys = [k for k, _ in order[:n]]
            rows.append({"count": n, "concepts": keys, "pairs": len(pairs.target_prompts),
                         "seconds": round(seconds, 1)} | score(erased, keys))
        finally:
            remove_lora(bundle.unet)
    return rows
