"""Domain correction's shared pieces, used by DoCo and by robust domain correction (RDC): the config, the label
convention, the discriminator's loss and the warm-up pair [Wu et al., AAAI-25]."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdc.config import bounded
from cdc.lora import base_model
from cdc.losses import unet_pred
from cdc.methods.config import LoraRunConfig

REAL, FAKE = 0.0, 1.0  # released label convention: anchor/real = 0, target/fake = 1

Surgery = Literal["pcgrad", "cosine", "sum"]
DInput = Literal["x0", "eps"]
DNorm = Literal["batch", "instance", "none"]


@dataclass(frozen=True)
class DocoConfig(LoraRunConfig):
    """DoCo: adversarial concept domain correction plus concept-preserving gradient surgery."""

    warmup_steps: int = bounded(0)  # discriminator-only steps at the start (the LoRA stays the identity)
    d_lr: float = bounded(0, lo_open=True)  # discriminator Adam learning rate, betas (0.5, 0.999)
    lam: float = bounded(0)  # surgery strength lambda
    surgery: Surgery  # cosine (released HEAD), pcgrad (first release), sum (weighted-sum ablation)
    per_tensor: bool  # pcgrad per parameter tensor (first release) or on the concatenated vector
    prior_weight: float = bounded(0)  # weight of the preservation gradient in "sum" mode
    d_input: DInput  # the discriminator sees predicted x0 (HEAD) or the noise prediction (first release)
    d_layers: int | None = bounded(1)  # stride-2 stages of the discriminator; None: down to >= 3x3 logits
    d_width: int = bounded(1)  # channels of the discriminator's first stage
    d_norm: DNorm  # discriminator normalisation ("batch" as released)
    detach_first_token: bool  # no gradient through cross-attention K/V of context position 0, as released
    d_gets_adv_grads: bool  # True reproduces the released quirk: D also steps on dL_adv/dD

    def __post_init__(self) -> None:
        """The LoRA must get at least one update after the warm-up."""
        super().__post_init__()
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps}): "
                             "the LoRA would never be trained")


def bce(logits: Tensor, label: float) -> Tensor:
    """BCE-with-logits of every patch logit against a constant label."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def warmup_pair(unet: nn.Module, layers: list[nn.Module], scheduler: object, to_d: Callable[..., Tensor], x_t: Tensor,
                t: Tensor, ctx_t: Tensor, ctx_a: Tensor) -> tuple[Tensor, Tensor]:
    """Warm-up: the LoRA is still the identity (B = 0), so one batched base call gives both predictions, as D sees
    them (`to_d`): (real: anchor contexts ctx_a, fake: target contexts ctx_t), each (B, C, h, w)."""
    with torch.no_grad(), base_model(unet, layers):
        out = unet_pred(unet, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([ctx_a, ctx_t]))
    real, fake = to_d(scheduler, out, torch.cat([x_t, x_t]), torch.cat([t, t])).chunk(2)
    return real, fake
