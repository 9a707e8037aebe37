"""Build the world: choose concepts, render both styles, attach phrases and prompt sets, check them."""

from __future__ import annotations

import random

import numpy as np
from tqdm.auto import tqdm

from cdc.world.captions import all_captions, normalise
from cdc.world.data import World
from cdc.world.render import render
from cdc.world.sources import STYLES, EmojiEntry, catalogue, glyph

# Near-identical glyph series that no judge can tell apart at 32 px (24 clock faces, moon phases).
_SKIP_WORDS = ("o'clock", "thirty", "moon", "face", "hand", "keycap")


def required_keys(targets: dict[str, dict]) -> list[str]:
    """Every concept the target families name (members, anchors, neighbours), in a fixed order."""
    keys: list[str] = []
    for fam in targets.values():
        if fam["kind"] == "style":
            continue
        keys += fam["members"] + [fam["anchor"]] + fam["neighbours"]
    return list(dict.fromkeys(keys))


def select_concepts(entries: list[EmojiEntry], targets: dict, n_concepts: int, seed: int) -> list[EmojiEntry]:
    """The target families and their neighbours, then a seeded sample of the rest up to n_concepts."""
    by_key = {e.key: e for e in entries}
    need = required_keys(targets)
    missing = [k for k in need if k not in by_key]
    if missing:
        raise ValueError(f"families.yaml names concepts that are not emoji in both styles: {missing}")
    rest = [e for e in entries if e.key not in need and not any(w in e.key for w in _SKIP_WORDS)]
    n_fill = max(0, n_concepts - len(need)) if n_concepts else len(rest)
    if n_fill > len(rest):
        raise ValueError(f"asked for {n_concepts} concepts but only {len(need) + len(rest)} are available")
    fill = random.Random(seed).sample(rest, n_fill)
    chosen = {e.key for e in fill} | set(need)
    return [e for e in entries if e.key in chosen]  # catalogue order keeps ids stable and readable


def check_families(targets: dict, styles: list[str]) -> None:
    """Reject families that cannot be erased meaningfully (anchor is the target, empty members, ...)."""
    for name, fam in targets.items():
        if fam["kind"] == "style":
            if name not in styles or fam["anchor"] not in styles or fam["anchor"] == name:
                raise ValueError(f"style family {name!r} needs a style name and another style as anchor")
            continue
        if not fam["members"]:
            raise ValueError(f"family {name!r} has no members")
        if fam["anchor"] in fam["members"]:
            raise ValueError(f"family {name!r}: the anchor {fam['anchor']!r} is also a member")


def check_out_of_set(out_of_set: dict[str, list[str]], targets: dict, training: set[str]) -> None:
    """Every family has out-of-set prompts and none of them is a training phrase or caption."""
    for name in targets:
        if not out_of_set.get(name):
            raise ValueError(f"no out-of-set prompts for family {name!r} in out_of_set.yaml")
    unknown = sorted(set(out_of_set) - set(targets))
    if unknown:
        raise ValueError(f"out_of_set.yaml names unknown families: {unknown}")
    leaked = [p for ps in out_of_set.values() for p in ps if normalise(p) in training]
    if leaked:
        raise ValueError(f"out-of-set prompts appear in the training captions: {leaked}")


def build_world(
    families: dict, out_of_set: dict[str, list[str]], *, size: int, n_concepts: int, seed: int,
    templates: list[str], styles: list[str] | tuple[str, ...] = STYLES, min_concepts: int = 1, progress: bool = True,
) -> World:
    """Render the chosen concepts in every style and attach phrases, families and prompt sets."""
    targets, extra = families["targets"], families.get("phrases", {})
    check_families(targets, styles)
    chosen = select_concepts(catalogue(), targets, n_concepts, seed)
    if len(chosen) < min_concepts:
        raise ValueError(f"the world has {len(chosen)} concepts, fewer than min_concepts={min_concepts}")
    keys = {e.key for e in chosen}
    unknown = sorted(set(extra) - keys)
    if unknown:
        raise ValueError(f"families.yaml has phrases for concepts not in the world: {unknown}")
    umbrella = {m: fam["umbrella"] for fam in targets.values() for m in fam["members"]}
    family_of = {m: name for name, fam in targets.items() for m in fam["members"]}
    concepts = []
    for i, e in enumerate(chosen):
        phrases = list(dict.fromkeys([e.key, *e.aliases, *extra.get(e.key, []), *umbrella.get(e.key, [])]))
        concepts.append({"id": i, "key": e.key, "emoji": e.char, "codepoint": e.codepoint,
                         "aliases": list(e.aliases), "phrases": phrases, "category": e.category,
                         "family": family_of.get(e.key)})
    training = {normalise(c) for con in concepts for s in styles for c in all_captions(con["phrases"], s, templates)}
    training |= {normalise(p) for con in concepts for p in con["phrases"]}
    check_out_of_set(out_of_set, targets, training)

    images, concept_ids, style_ids = [], [], []
    for e, con in zip(tqdm(chosen, desc="render", disable=not progress), concepts):
        for s, style in enumerate(styles):
            images.append(render(glyph(e, style), size))
            concept_ids.append(con["id"])
            style_ids.append(s)
    return World(np.stack(images), np.array(concept_ids, dtype=np.int64), np.array(style_ids, dtype=np.int64),
                 concepts, list(styles), targets, out_of_set, list(templates))
