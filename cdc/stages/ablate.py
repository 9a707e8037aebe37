"""The ablate stage (and `benchmarks/erase_sweep.py`): erase with one config, then score the erased model
exactly as the evaluate and attack stages score the erase table's rows."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np

from cdc import evaluate as ev
from cdc.anchors import Pairs
from cdc.bundle import ModelBundle
from cdc.config import EvaluateParams, SampleParams
from cdc.judge import JudgeNet
from cdc.lora import remove_lora
from cdc.sampler import sample
from cdc.stages.attack import AttackPlan, attack_row, flat_row
from cdc.stages.erase import MethodConfig, run_method
from cdc.stages.sections.attack import AttackParams
from cdc.world.captions import CANONICAL_STYLE, canonical_prompt
from cdc.world.data import World

Scorer = Callable[[ModelBundle], dict]


def scorer(judge: JudgeNet, world: World, pairs: Pairs, probe: list[str], retain: list[str], cfg: EvaluateParams,
           sampler: SampleParams, attack: AttackParams | None = None, plan: AttackPlan | None = None, *,
           fid: bool = True) -> Scorer:
    """model -> its erase-table columns (`cdc.evaluate.erasure_row`; world-FID unless `fid` is False), plus the
    attack columns (`cdc.stages.attack.flat_row`) when an attack plan is given; every model is judged on the same
    prompts
    and seeds."""
    if (attack is None) != (plan is None):
        raise ValueError("give both the attack section and its plan, or neither")
    evaluate_row = functools.partial(ev.erasure_row, judge=judge, world=world, family=pairs.family,
                                     in_set=pairs.target_prompts, probe=probe, retain=retain, cfg=cfg,
                                     sampler=sampler, progress=False, fid=fid)

    def score(model: ModelBundle) -> dict:
        row, _ = evaluate_row(model)
        if plan is not None:
            attacked, _ = attack_row(model, judge, world, plan, attack, sampler, progress=False)
            row |= flat_row(attacked)
        return row

    return score


def run_arm(bundle: ModelBundle, method: str, cfg: MethodConfig, pairs: Pairs, samples: dict[str, np.ndarray],
            score: Scorer, *, retain: tuple[list[str], np.ndarray] | None = None,
            progress: bool = True) -> tuple[dict, list[dict]]:
    """Erase `bundle` with one method config, score the erased model, then take the erasure out of `bundle` again;
    returns the row (the scores, erase seconds, the share of DoCo steps whose surgery fired) and the history."""
    start = time.perf_counter()
    try:
        erased, history = run_method(bundle, method, pairs, samples, cfg, retain=retain, progress=progress)
        seconds = time.perf_counter() - start
        row = score(erased)
    finally:
        remove_lora(bundle.unet)  # a LoRA method trained inside bundle.unet; AdvUnlearn's encoder is a copy
    fired = [h["surgery_fired"] for h in history if h.get("surgery_fired") is not None]
    # No peak memory: the process peak grows over runs (the erase stage records one per fresh process).
    return row | {"seconds": round(seconds, 1), "surgery_fired": float(np.mean(fired)) if fired else None}, history


def reanchored(bundle: ModelBundle, world: World, pairs: Pairs, samples: dict[str, np.ndarray], anchor: str,
               sampler: SampleParams, seed: int, *, progress: bool = True) -> tuple[Pairs, dict[str, np.ndarray]]:
    """An anchor arm's data: each pair's anchor prompt replaced by `anchor` (a world concept in the pair's style;
    "" the empty prompt) and the base model's images of it, drawn for the same pairs and seeds (seed, seed + 1,
    ...) as the anchors stage draws the family's anchor; the target side is kept.

    Only an object family has an anchor concept to swap (a style family's anchor is a style).
    """
    if pairs.family not in world.targets:
        raise KeyError(f"{pairs.family!r} is not a concept family of the world")
    family = world.targets[pairs.family]
    if family["kind"] == "style":
        raise ValueError(f"{pairs.family!r} is a style family: its anchor is a style, not a concept to swap")
    if anchor and anchor not in world.keys:
        raise KeyError(f"unknown anchor concept {anchor!r}: not a concept of the world")
    if anchor in family["members"]:
        raise ValueError(f"anchor {anchor!r} is a member of {pairs.family!r}: the erasure would teach the target")
    styles = []
    for prompt in pairs.anchor_prompts:  # the family's anchor, canonical, in the pair's style
        match = [s for s, suffix in CANONICAL_STYLE.items() if prompt.endswith(suffix)]
        if len(match) != 1:
            raise ValueError(f"anchor prompt {prompt!r} names no one style of the world")
        styles.append(match[0])
    prompts = [canonical_prompt(anchor, s) if anchor else "" for s in styles]
    index = samples["anchor_index"]
    images = sample(bundle, [prompts[i] for i in index], [seed + j for j in range(len(index))], sampler,
                    progress=progress)
    return Pairs(pairs.family, list(pairs.target_prompts), prompts), samples | {"anchor_images": images}
