"""params.yaml `pretrain`: train the world text-to-image model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cdc.choices import Attention, Precision
from cdc.config import Checked, bounded


@dataclass(frozen=True)
class PretrainParams(Checked):
    """Train the world text-to-image model (small UNet2DConditionModel on MiniLM context)."""

    steps: int = bounded(1)
    batch_size: int = bounded(1)
    lr: float = bounded(0, lo_open=True)  # peak AdamW learning rate after linear warm-up, cosine decay
    warmup_steps: int = bounded(0)
    block_channels: list[int] = bounded(1)  # UNet channels per level, top first
    cross_attention: list[bool]  # per level: whether it attends to the text
    layers_per_block: int = bounded(1)
    attention_head_dim: int = bounded(1)
    prediction_type: Literal["epsilon", "v_prediction"]
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
    num_train_timesteps: int = bounded(1)
    ema_decay: float = bounded(0, 1, hi_open=True)
    caption_dropout: float = bounded(0, 1)  # probability of the empty prompt, for classifier-free guidance
    captions_per_image: int = bounded(1)  # training captions drawn per render from phrases x templates x styles
    max_length: int = bounded(1)  # MiniLM tokens per prompt (plus one sentence-embedding token)
    pooled_scale: float = bounded(0, lo_open=True)  # norm of the sentence-embedding token
    token_dropout: float = bounded(0, 1)  # probability that a caption keeps only its sentence token
    pooled_noise: float = bounded(0)  # norm of the noise added to the unit sentence embedding in training
    precision: Precision  # bf16 autocast (mixed precision) where the device has native bf16
    attention: Attention  # unfused on the CPU, fused SDPA on GPU (cdc.attention)
    seed: int = bounded(0)
    log_every: int = bounded(1)

    def __post_init__(self) -> None:
        """Reject inconsistent UNet shapes and a warm-up as long as training."""
        super().__post_init__()
        if not self.block_channels or len(self.cross_attention) != len(self.block_channels):
            raise ValueError(
                f"cross_attention has {len(self.cross_attention)} entries but block_channels "
                f"has {len(self.block_channels)} (need one per level, at least one level)"
            )
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
