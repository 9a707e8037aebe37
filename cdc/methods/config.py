"""The knobs every method's LoRA run shares; each method's own config (params.yaml erase.<method>) lives in its module.

No field has a default: the committed params.yaml is the one place their values live (tests build
configs from their smoke params file, then `dataclasses.replace`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cdc.choices import LoraGroup
from cdc.config import Checked, bounded


@dataclass(frozen=True)
class LoraRunConfig(Checked):
    """Knobs every method's LoRA run shares; each method's config adds its own."""

    steps: int = bounded(1)  # optimisation steps (DoCo: discriminator warm-up included)
    lr: float = bounded(0, lo_open=True)  # LoRA AdamW learning rate
    batch_size: int = bounded(1)  # latents per step (and as many prior pairs where a method has them)
    lora_group: LoraGroup
    lora_rank: int = bounded(1)
    lora_alpha: float | None = bounded(0, lo_open=True)  # None: alpha = rank (scale 1)
    max_grad_norm: float = bounded(0, lo_open=True)  # global-norm clip of each gradient before the step
    weight_decay: float = bounded(0)  # AdamW decoupled weight decay
    seed: int = bounded(0)  # LoRA init and every batch, noise and timestep draw
    log_every: int = bounded(1)  # steps between history rows
