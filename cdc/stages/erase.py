"""The erase stage: one entry point that trains any method on an anchors folder's pairs and samples.

Each method's module is imported when it runs (`cdc.methods.method_module`), so a stage that trains one method
loads (and, in dvc.yaml, depends on) that method's code only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cdc.anchors import Pairs
from cdc.bundle import ModelBundle
from cdc.codec import encode_images
from cdc.methods import method_module
from cdc.methods.config import LoraRunConfig
from cdc.methods.parallel import SINGLE, Shard
from cdc.methods.train import ErasureData, StepHook
from cdc.world.captions import canonical_prompt
from cdc.world.data import World

MethodConfig = LoraRunConfig  # every method's Config extends it


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
    for the target prompts; the sides the method learns from (its `NEEDS`) must be there.
    retain: prompts and images of other concepts (`retain_set`), for a method that needs "retain".
    shard: this process's rows of each batch when several processes train together (`accelerate launch`).
    on_step: called after each step with (step, the trained tensors), e.g. to snapshot them (`cdc.stages.tradeoff`).
    The UNet methods put their LoRA into `bundle.unet` and return `bundle`; a method that trains the text encoder
    returns a copy of `bundle` with the trained encoder and leaves `bundle` as it was.
    """
    module = method_module(method)
    if "retain" in module.NEEDS and retain is None:
        raise ValueError(f"{method} needs its retain set (retain=retain_set(...))")

    def latents(side: str) -> torch.Tensor | None:
        images = samples.get(f"{side}_images") if side in module.NEEDS else None
        return None if images is None else latents_of(bundle, images)

    def index(side: str) -> list[int] | None:
        found = samples.get(f"{side}_index") if side in module.NEEDS else None
        return None if found is None else np.asarray(found).tolist()

    data = ErasureData(
        target_prompts=pairs.target_prompts, anchor_prompts=pairs.anchor_prompts,
        target_latents=latents("target"), target_index=index("target"),
        anchor_latents=latents("anchor"), anchor_index=index("anchor"),
        retain_prompts=None if retain is None else retain[0],
        retain_latents=None if retain is None or "retain" not in module.NEEDS else latents_of(bundle, retain[1]),
    )
    return module.erase(bundle, data, cfg, progress=progress, shard=shard, on_step=on_step)


def latents_of(bundle: ModelBundle, images: np.ndarray) -> torch.Tensor:
    """Images (N, H, W, 3) uint8 in the UNet's latent space (N, C, h, w)."""
    return encode_images(bundle.codec, images, bundle.device, bundle.dtype)
