"""The erase stage: one entry point that trains any method on an anchors folder's pairs and samples, and the
erased model's files (a UNet LoRA, or AdvUnlearn's text encoder) saved and loaded as one kind of thing."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdc.anchors import Pairs
from cdc.bundle import ModelBundle
from cdc.codec import encode_images
from cdc.lora_io import load_lora, save_lora
from cdc.methods.advunlearn import train_advunlearn
from cdc.methods.ca import train_ca
from cdc.methods.config import AdvUnlearnConfig, CaConfig, DocoConfig, EsdConfig
from cdc.methods.doco import train_doco
from cdc.methods.esd import train_esd
from cdc.methods.lora import base_model, remove_lora, tuner_layers
from cdc.methods.parallel import SINGLE, Shard
from cdc.methods.text_encoder import load_text_encoder, save_text_encoder
from cdc.methods.train import StepHook
from cdc.params import METHODS
from cdc.world.captions import canonical_prompt
from cdc.world.data import World

MethodConfig = DocoConfig | EsdConfig | CaConfig | AdvUnlearnConfig


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
    on_step: called after each step with (step, the trained tensors), e.g. to snapshot them (`cdc.tradeoff`).
    The LoRA methods put their LoRA into `bundle.unet` and return `bundle`; AdvUnlearn on the text encoder
    returns a copy of `bundle` with the trained encoder and leaves `bundle` as it was.
    """
    def to_latents(images: np.ndarray) -> torch.Tensor:
        return encode_images(bundle.codec, images, bundle.device, bundle.dtype)

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    if method.startswith("advunlearn"):
        if retain is None:
            raise ValueError(f"{method} needs its retain set (retain=retain_set(...))")
        module, history = train_advunlearn(
            bundle, pairs.target_prompts, to_latents(samples["target_images"]), retain[0], to_latents(retain[1]),
            cfg, target_index=samples["target_index"].tolist(), progress=progress, shard=shard, on_step=on_step)
        if module is bundle.unet:
            return bundle, history
        return dataclasses.replace(bundle, text=module), history
    if method == "doco":
        _, history = train_doco(bundle, pairs.target_prompts, pairs.anchor_prompts,
                                to_latents(samples["anchor_images"]), cfg,
                                anchor_index=samples["anchor_index"].tolist(), progress=progress, shard=shard,
                                on_step=on_step)
    elif method == "ca":
        _, history = train_ca(bundle, pairs.target_prompts, pairs.anchor_prompts, to_latents(samples["anchor_images"]),
                              cfg, anchor_index=samples["anchor_index"].tolist(), progress=progress, shard=shard,
                              on_step=on_step)
    else:
        _, history = train_esd(bundle, pairs.target_prompts, to_latents(samples["target_images"]), cfg,
                               target_index=samples["target_index"].tolist(), progress=progress, shard=shard,
                               on_step=on_step)
    return bundle, history


def save_erased(erased: ModelBundle, base: ModelBundle, path: str | Path, config: dict[str, Any]) -> Path:
    """Write what an erasure trained: a text encoder folder where `erased` has its own encoder (AdvUnlearn),
    else the UNet's LoRA; both with `config` and fingerprints of `base`."""
    if erased.text is not base.text:
        return save_text_encoder(erased.text, path, config, base=base.text)
    return save_lora(erased.unet, path, config)


@contextmanager
def erased_model(bundle: ModelBundle, path: str | Path | None,
                 allow_other_base: bool = False) -> Iterator[ModelBundle]:
    """The bundle with an erasure from `path` applied: a text encoder folder (AdvUnlearn) gives a copy with
    that encoder; a LoRA is loaded into `bundle.unet` for the block and removed after it; None: `bundle`."""
    if path is None:
        yield bundle
        return
    path = Path(path)
    if (path / "config.json").is_file():  # a transformers model folder; a LoRA folder has no config.json
        yield dataclasses.replace(bundle, text=load_text_encoder(bundle, path, allow_other_base))
        return
    load_lora(bundle.unet, path, allow_other_base=allow_other_base)
    try:
        yield bundle
    finally:
        remove_lora(bundle.unet)


@contextmanager
def original_model(bundle: ModelBundle) -> Iterator[ModelBundle]:
    """`bundle` as the model before erasure: any LoRA of its UNet switched off inside the block (an erasure of
    the text encoder lives in its own copy of the bundle, so `bundle` is already the original)."""
    layers = tuner_layers(bundle.unet)
    if not layers:
        yield bundle
        return
    with base_model(bundle.unet, layers):
        yield bundle
