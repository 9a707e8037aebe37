"""The knobs of each erasure method: params.yaml sections erase.doco, erase.esd, erase.ca and erase.advunlearn*.

No field has a default: the committed params.yaml is the one place their values live (tests build
configs from their smoke params file, then `dataclasses.replace`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cdc.choices import LoraGroup
from cdc.config import Checked, bounded

Surgery = Literal["pcgrad", "cosine", "sum"]
DInput = Literal["x0", "eps"]
DNorm = Literal["batch", "instance", "none"]
AttackMethod = Literal["pgd", "fast_at"]  # AdvUnlearn's inner attack: the gradient, or its sign (fast AT)
Module = Literal["text_encoder", "unet"]  # what AdvUnlearn trains


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


@dataclass(frozen=True)
class EsdConfig(LoraRunConfig):
    """ESD: negative-guidance self-distillation."""

    negative_guidance: float = bounded(0)  # eta in e_u - eta (e_c - e_u)


@dataclass(frozen=True)
class CaConfig(LoraRunConfig):
    """Concept Ablation, model-based variant, with the DreamBooth prior-preservation term."""

    prior_weight: float = bounded(0)  # 0 turns the prior-preservation term off


@dataclass(frozen=True)
class AdvUnlearnConfig(LoraRunConfig):
    """AdvUnlearn's knobs (released values in comments); lora_* only matter for module="unet".

    Inherited: steps (1000), lr (Adam 1e-5 on the text encoder), batch_size (1), max_grad_norm (released: no clipping),
    weight_decay (0), seed, log_every, lora_group / lora_rank / lora_alpha.
    """

    warmup_steps: int = bounded(0)  # first steps without attack (200)
    negative_guidance: float = bounded(0)  # eta in e_u - eta (e_c - e_u) (1)
    retain_weight: float = bounded(0)  # gamma of the retain regulariser (README 0.3; 0 turns it off)
    retain_batch: int = bounded(1)  # retain latents per step (5 prompts)
    attack_steps: int = bounded(0)  # inner steps per attack (30); 0: never attack (ESD on the module)
    attack_k: int = bounded(1)  # adversarial prefix tokens (1)
    attack_lr: float = bounded(0, lo_open=True)  # Adam lr on delta (1e-3)
    attack_method: AttackMethod  # pgd: Adam on the gradient; fast_at: Adam on its sign
    module: Module  # text_encoder (released) or a UNet LoRA (ablation)
    text_layers: int | None = bounded(1)  # None: all layers + final norm (text_encoder_full); n: first n

    def __post_init__(self) -> None:
        """The warm-up must leave at least one adversarial step."""
        super().__post_init__()
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps}): "
                             "no step would be adversarial")
