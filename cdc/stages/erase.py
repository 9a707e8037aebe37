"""The erase stage: one entry point that trains any method on an anchors folder's pairs and samples.

Each method's module is imported when it runs, so a stage that trains one method loads (and, in dvc.yaml,
depends on) that method's code only."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch

from cdc.anchors import Pairs
from cdc.bundle import ModelBundle
from cdc.codec import encode_images
from cdc.methods.config import AdvUnlearnConfig, CaConfig, DocoConfig, EsdConfig
from cdc.methods.parallel import SINGLE, Shard
from cdc.methods.train import StepHook
from cdc.stages.params import METHODS
from cdc.world.captions import canonical_prompt
from cdc.world.data import World

MethodConfig = DocoConfig | EsdConfig | CaConfig | AdvUnlearnConfig


def method_module(method: str) -> ModuleType:
    """cdc.methods.<method>, the module that trains `method`, imported now (dvc.yaml: the stage's own code dep)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    return importlib.import_module(f"cdc.methods.{method}")


def retain_set(world: World, family: str, exclude: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """AdvUnlearn's retain data in the world: every render of a concept outside every family (members, anchors,
    neighbours) and outside `exclude` (the evaluation's retained concepts, so retention is measured on concepts
    the regulariser never saw), with its canonical prompt: (prompts (N,), images (N, S, S, 3) uint8).

    Erasing a style family also leaves out every render in that style: its prompts name the style, and the
    released code drops retain prompts that name the concept.
    """
    skip = set(exclude) | {k for f in world.targets.values() for k in [*f["members"], *f["neighbours"]]}
    skip |= {f["anchor"] for f in world.targets.values() if f["kind"] == "object"}
    styles = [world.styles.index(family)] if world.targets[family]["kind"] == "style" else []
    keep = [i for i in range(len(world.images))
            if world.keys[world.concept[i]] not in skip and world.style[i] not in styles]
    if not keep:
        raise ValueError("no render is left for AdvUnlearn's retain set")
    prompts = [canonical_prompt(world.keys[world.concept[i]], world.styles[world.style[i]]) for i in keep]
    return prompts, world.images[keep]


def run_method(
    bundle: ModelBundle, method: str, pairs: Pairs, samples: dict[str, np.ndarray], cfg: MethodConfig, *,
    retain: tuple[list[str], np.ndarray] | None = None, progress: bool = True, shard: Shard = SINGLE,
    on_step: StepHook | None = None,
) -> tuple[ModelBundle, list[dict]]:
    """Train one method on the family's pairs and the base model's samples (from the anchors stage); returns
    the erased model and the training history.

    samples: anchor_images (N, H, W, 3) uint8 drawn from anchor_index (N,) into anchor prompts, and the same
    for the target prompts (ESD and AdvUnlearn learn from the base model's own images of the concept).
    retain: AdvUnlearn's regulariser data, prompts and images (`retain_set`).
    shard: this process's rows of each batch when several processes train together (`accelerate launch`).
    on_step: called after each step with (step, the trained tensors), e.g. to snapshot them (`cdc.stages.tradeoff`).
    The LoRA methods put their LoRA into `bundle.unet` and return `bundle`; AdvUnlearn on the text encoder
    returns a copy of `bundle` with the trained encoder and leaves `bundle` as it was.
    """
    def to_latents(images: np.ndarray) -> torch.Tensor:
        return encode_images(bundle.codec, images, bundle.device, bundle.dtype)

    module = method_module(method)
    if method.startswith("advunlearn"):
        if retain is None:
            raise ValueError(f"{method} needs its retain set (retain=retain_set(...))")
        trained, history = module.train_advunlearn(
            bundle, pairs.target_prompts, to_latents(samples["target_images"]), retain[0], to_latents(retain[1]),
            cfg, target_index=samples["target_index"].tolist(), progress=progress, shard=shard, on_step=on_step)
        if trained is bundle.unet:
            return bundle, history
        return dataclasses.replace(bundle, text=trained), history
    if method == "esd":
        _, history = module.train_esd(bundle, pairs.target_prompts, to_latents(samples["target_images"]), cfg,
                                      target_index=samples["target_index"].tolist(), progress=progress,
                                      shard=shard, on_step=on_step)
    else:  # DoCo and CA train on the anchor side's samples
        train = module.train_doco if method == "doco" else module.train_ca
        _, history = train(bundle, pairs.target_prompts, pairs.anchor_prompts, to_latents(samples["anchor_images"]),
                           cfg, anchor_index=samples["anchor_index"].tolist(), progress=progress, shard=shard,
                           on_step=on_step)
    return bundle, history
