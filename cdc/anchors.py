"""The anchors stage: paired target/anchor prompts per family and the base model's samples of both."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cdc.bundle import ModelBundle
from cdc.config import PHRASES, SampleParams
from cdc.io import atomic_path, load_json, save_json, save_npz
from cdc.sampler import sample
from cdc.world.captions import CANONICAL_STYLE, STYLE_SUFFIXES, canonical_prompt, with_article
from cdc.world.data import World


@dataclass(frozen=True)
class Pairs:
    """target_prompts[i] is anchor_prompts[i] with the concept in it (DoCo / CA data contract)."""

    family: str
    target_prompts: list[str]
    anchor_prompts: list[str]


def family_of(world: World, slug: str) -> str:
    """'articulated-lorry' -> 'articulated lorry', with a clear error for an unknown family."""
    by_slug = {name.replace(" ", "-"): name for name in world.targets}
    if slug not in by_slug:
        raise KeyError(f"unknown concept family {slug!r} (known: {', '.join(sorted(by_slug))})")
    return by_slug[slug]


def erase_pairs(world: World, family: str, probe: Sequence[str], phrases: str = "all") -> Pairs:
    """In-set training pairs: each target phrase x style -> the anchor's name in the same style.

    phrases="all": every phrase the world's training captions use for the members (names, aliases,
    keywords) and the family's umbrella words, as DoCo and CA train on many captions of the concept;
    "names": the members' names and the umbrella words; "drawn" starts from "all" and is narrowed by
    `keep_drawn` once the base model's samples are judged. The anchor side is always the anchor's name, as
    DoCo swaps one anchor word for the target: an anchor alias can be drawn as the target itself (the
    world model draws "a box truck" as an articulated lorry half the time), which would teach the target.
    A style family keeps the object and swaps the style: "a cat, openmoji style" -> "a cat, twemoji style";
    with "all", every way the training captions name the style ("a cat, line art emoji", ...) maps to the
    anchor style's canonical prompt, the style's analogue of an object's keywords.
    """
    if phrases not in PHRASES:
        raise ValueError(f"unknown phrases option {phrases!r} (known: {', '.join(PHRASES)})")
    fam = world.targets[family]
    if fam["kind"] == "style":
        if not probe:
            raise ValueError(f"style family {family!r} needs probe concepts")
        # "" (the caption that leaves the style open) is not a phrase of the style.
        suffixes = [s for s in STYLE_SUFFIXES[family] if s] if phrases == "all" else [CANONICAL_STYLE[family]]
        suffixes.sort(key=lambda s: s != CANONICAL_STYLE[family])  # canonical phrasing first
        return Pairs(family, [with_article(k) + s for k in probe for s in suffixes],
                     [canonical_prompt(k, fam["anchor"]) for k in probe for _ in suffixes])
    if phrases in ("all", "drawn"):
        names = [p for m in fam["members"] for p in world.concepts[world.index(m)]["phrases"]] + fam["umbrella"]
    else:
        names = fam["members"] + fam["umbrella"]
    # One prompt per phrase: "weapon" and "a weapon" are the same prompt, and members share umbrella words.
    first: dict[str, str] = {}
    for n in names:
        first.setdefault(with_article(n).lower(), n)
    names = list(first.values())
    if not names:
        raise ValueError(f"family {family!r} has no prompts (no members or umbrella words)")
    targets = [canonical_prompt(n, s) for n in names for s in world.styles]
    anchors = [canonical_prompt(fam["anchor"], s) for _ in names for s in world.styles]
    clash = [t for t, a in zip(targets, anchors) if t == a]
    if clash:
        raise ValueError(f"family {family!r}: the anchor prompt equals the target prompt {clash[0]!r}")
    return Pairs(family, targets, anchors)


def keep_drawn(
    pairs: Pairs, samples: dict[str, np.ndarray], hits: np.ndarray, min_rate: float
) -> tuple[Pairs, dict[str, np.ndarray]]:
    """Keep the pairs whose target prompt the base model draws as the concept (judge hit rate >= min_rate).

    hits (M,) bool says whether the judge sees the family in target_images[j], drawn for pair
    target_index[j]. A phrase the base model draws as something else ("a juggernaut" as an elephant)
    would teach the erasure to move that other concept, so it is dropped; the samples of kept pairs are
    renumbered to the kept pairs' new positions.
    """
    index = samples["target_index"]
    if hits.shape != index.shape:
        raise ValueError(f"{hits.shape} judge verdicts for {index.shape} target images")
    n = len(pairs.target_prompts)
    rate = np.bincount(index, weights=hits.astype(float), minlength=n) / np.maximum(np.bincount(index, minlength=n), 1)
    kept = np.flatnonzero(rate >= min_rate)  # (K,) pair ids, in order
    if len(kept) == 0:
        raise ValueError(f"family {pairs.family!r}: the base model draws none of its prompts as the concept "
                         f"(best rate {rate.max():.2f} < {min_rate})")
    new_id = np.full(n, -1)
    new_id[kept] = np.arange(len(kept))
    out = {}
    for side in ("anchor", "target"):
        keep = np.isin(samples[f"{side}_index"], kept)  # (M,) images of kept pairs
        out[f"{side}_images"] = samples[f"{side}_images"][keep]
        out[f"{side}_index"] = new_id[samples[f"{side}_index"][keep]]
    return Pairs(pairs.family, [pairs.target_prompts[i] for i in kept],
                 [pairs.anchor_prompts[i] for i in kept]), out


def save_anchors(path: str | Path, pairs: Pairs, probe: list[str], samples: dict[str, np.ndarray]) -> Path:
    """Write an anchors folder atomically: samples.npz (images and their prompt ids) and pairs.json
    (the pairs and, for a style family, the probe objects)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        save_npz(tmp / "samples.npz", **samples)
        save_json({**asdict(pairs), "probe": list(probe)}, tmp / "pairs.json")
    return path


def load_anchors(path: str | Path) -> tuple[Pairs, list[str], dict[str, np.ndarray]]:
    """(pairs, probe objects, samples) of an anchors folder written by `save_anchors`."""
    path = Path(path)
    for name in ("pairs.json", "samples.npz"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"no anchors in {path} (missing {name}): run `dvc repro anchors` first")
    raw = load_json(path / "pairs.json")
    probe = raw.pop("probe", [])
    with np.load(path / "samples.npz") as npz:
        samples = {k: npz[k] for k in npz.files}
    return Pairs(**raw), probe, samples


def pair_samples(bundle: ModelBundle, pairs: Pairs, per_prompt: int, sampler: SampleParams, seed: int,
                 *, progress: bool = True) -> dict[str, np.ndarray]:
    """The base model's samples of both sides of every pair, per_prompt each (seeds seed, seed + 1, ...), in the
    anchors stage's layout: anchor_images (N, H, W, 3) uint8 and anchor_index (N,), the same for targets."""
    index = np.repeat(np.arange(len(pairs.target_prompts)), per_prompt)  # image j was drawn for pair index[j]
    seeds = [seed + j for j in range(len(index))]
    out = {}
    for side, prompts in (("anchor", pairs.anchor_prompts), ("target", pairs.target_prompts)):
        out[f"{side}_images"] = sample(bundle, [prompts[i] for i in index], seeds, sampler, progress=progress)
        out[f"{side}_index"] = index
    return out
