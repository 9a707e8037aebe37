"""The erase stage: one entry point that trains any method's LoRA on an anchors folder's pairs and samples."""

from __future__ import annotations

import numpy as np
import torch

from cdc.anchors import Pairs
from cdc.bundle import ModelBundle
from cdc.codec import encode_images
from cdc.methods.ca import train_ca
from cdc.methods.config import CaConfig, DocoConfig, EsdConfig
from cdc.methods.doco import train_doco
from cdc.methods.esd import train_esd
from cdc.params import METHODS


def run_method(
    bundle: ModelBundle, method: str, pairs: Pairs, samples: dict[str, np.ndarray],
    cfg: DocoConfig | EsdConfig | CaConfig, *, progress: bool = True,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train one method's LoRA on the family's pairs and the base model's samples (from the anchors stage).

    samples: anchor_images (N, H, W, 3) uint8 drawn from anchor_index (N,) into anchor prompts, and the same
    for the target prompts (ESD learns from the base model's own images of the concept).
    """
    def to_latents(images: np.ndarray) -> torch.Tensor:
        return encode_images(bundle.codec, images, bundle.device, bundle.dtype)

    if method == "doco":
        return train_doco(bundle, pairs.target_prompts, pairs.anchor_prompts, to_latents(samples["anchor_images"]),
                          cfg, anchor_index=samples["anchor_index"].tolist(), progress=progress)
    if method == "ca":
        return train_ca(bundle, pairs.target_prompts, pairs.anchor_prompts, to_latents(samples["anchor_images"]),
                        cfg, anchor_index=samples["anchor_index"].tolist(), progress=progress)
    if method == "esd":
        return train_esd(bundle, pairs.target_prompts, to_latents(samples["target_images"]), cfg,
                         target_index=samples["target_index"].tolist(), progress=progress)
    raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
